"""An app split across a Blueprint, as in the azure-functions-durable samples."""

import azure.durable_functions as df
import azure.functions as func
from greetings_blueprint import bp

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(bp)


@app.route(route="orchestrators/{functionName}/{instanceId?}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client, context: func.Context):
    instance_id = await client.start_new(
        req.route_params["functionName"],
        req.route_params.get("instanceId"),
        req.get_json() if req.get_body() else None,
    )
    return client.create_check_status_response(req, instance_id)


@app.orchestration_trigger(context_name="context")
def greet_all(context: df.DurableOrchestrationContext):
    names = context.get_input()
    children = [
        context.call_sub_orchestrator("GreetingOrchestration", name, f"{context.instance_id}-{i}")
        for i, name in enumerate(names)
    ]
    greetings = yield context.task_all(children)
    joined = yield context.call_activity(join_greetings, [g["greeting"] for g in greetings])
    return {"joined": joined, "parents": [g["parent"] for g in greetings]}


@app.activity_trigger(input_name="greetings")
def join_greetings(greetings: list) -> str:
    return " / ".join(greetings)
