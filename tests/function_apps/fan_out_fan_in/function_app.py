"""Fan-out/fan-in, as in the azure-functions-durable samples (v2 programming model)."""

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="orchestrators/{functionName}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient):
    instance_id = await client.start_new(req.route_params["functionName"], None, req.get_json())
    return client.create_check_status_response(req, instance_id)


@app.orchestration_trigger(context_name="context")
def fan_out_fan_in(context: df.DurableOrchestrationContext):
    count = context.get_input()
    work_batch = yield context.call_activity("GetWorkBatch", count)

    parallel_tasks = [context.call_activity("ProcessItem", item) for item in work_batch]
    outputs = yield context.task_all(parallel_tasks)

    retry_options = df.RetryOptions(
        first_retry_interval_in_milliseconds=100, max_number_of_attempts=2
    )
    total = yield context.call_activity_with_retry("sum_outputs", retry_options, outputs)
    sources = sorted({item["source"] for item in work_batch})
    return {"items": len(work_batch), "outputs": outputs, "total": total, "sources": sources}


@app.function_name(name="GetWorkBatch")
@app.activity_trigger(input_name="count")
def get_work_batch(count: int, context: func.Context) -> list:
    # The invocation context is passed because the function declares `context`.
    return [{"index": i, "source": context.function_name} for i in range(count)]


@app.function_name(name="ProcessItem")
@app.activity_trigger(input_name="item")
async def process_item(item: dict) -> int:
    return (item["index"] + 1) * 10


@app.activity_trigger(input_name="values")
def sum_outputs(values: list) -> int:
    return sum(values)
