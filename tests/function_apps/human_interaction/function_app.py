"""Human interaction (approval with a timeout), as in the azure-functions-durable samples."""

from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="approvals", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start_approval(req: func.HttpRequest, client):
    instance_id = await client.start_new("approval_orchestrator", client_input=req.get_json())
    return client.create_check_status_response(req, instance_id)


@app.route(route="approvals/{instanceId}/approve", methods=["POST"])
@app.durable_client_input(client_name="client")
async def approve(req: func.HttpRequest, client):
    instance_id = req.route_params["instanceId"]
    await client.raise_event(instance_id, "ApprovalEvent", req.get_json())
    return func.HttpResponse(status_code=202)


@app.orchestration_trigger(context_name="context")
def approval_orchestrator(context: df.DurableOrchestrationContext):
    request = context.get_input()
    yield context.call_activity("request_approval", request)

    due_time = context.current_utc_datetime + timedelta(seconds=request["timeout_seconds"])
    durable_timeout_task = context.create_timer(due_time)
    approval_event_task = context.wait_for_external_event("ApprovalEvent")

    winning_task = yield context.task_any([approval_event_task, durable_timeout_task])
    if approval_event_task == winning_task:
        durable_timeout_task.cancel()
        decision = yield context.call_activity("process_approval", approval_event_task.result)
        context.set_custom_status({"stage": "decided"})
        return decision

    escalation = yield context.call_activity("escalate", request)
    context.set_custom_status({"stage": "escalated"})
    return escalation


@app.activity_trigger(input_name="request")
def request_approval(request: dict) -> str:
    return f"approval requested for {request['item']}"


@app.activity_trigger(input_name="approval")
def process_approval(approval: dict) -> str:
    return "approved" if approval.get("approved") else "rejected"


@app.activity_trigger(input_name="request")
def escalate(request: dict) -> str:
    return f"escalated {request['item']}"
