"""Functions declared on a Blueprint and registered by function_app.py."""

import azure.durable_functions as df
import azure.functions as func

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context", orchestration="GreetingOrchestration")
def greeting_orchestrator(context: df.DurableOrchestrationContext):
    name = context.get_input()
    shout = yield context.call_activity("Shout", name)
    return {"greeting": shout, "parent": context.parent_instance_id}


@bp.activity_trigger(input_name="name", activity="Shout")
def shout_activity(name: str) -> str:
    return f"HELLO {name.upper()}!"


@bp.route(route="greetings/{name}/{style?}", methods=["GET"])
def greeting_http(req: func.HttpRequest) -> func.HttpResponse:
    style = req.route_params.get("style") or "plain"
    name = req.route_params["name"]
    return func.HttpResponse(
        f'{{"name": "{name}", "style": "{style}", "lang": "{req.params.get("lang", "en")}"}}',
        status_code=200,
        mimetype="application/json",
    )
