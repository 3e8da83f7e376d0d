"""An eternal orchestration with continue_as_new, as in the azure-functions-durable samples."""

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.orchestration_trigger(context_name="context")
def eternal_counter(context: df.DurableOrchestrationContext):
    state = context.get_input() or {"count": 0, "limit": 3}
    count = yield context.call_activity("increment", state["count"])
    context.set_custom_status({"count": count})
    if count >= state["limit"]:
        return {"count": count, "instance": context.instance_id}

    # Restart with a fresh history instead of looping forever in one execution.
    context.continue_as_new({"count": count, "limit": state["limit"]})


@app.activity_trigger(input_name="value")
def increment(value: int) -> int:
    return value + 1
