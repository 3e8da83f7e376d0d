"""Logging in a function app as azure-functions-durable code does it: the orchestrator
logs only when ``not context.is_replaying``, with the root ``logging`` functions."""

import logging

import azure.durable_functions as df
import azure.functions as func

myApp = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@myApp.orchestration_trigger(context_name="context")
def logged_steps(context: df.DurableOrchestrationContext):
    # Logged on every replay, so the test can tell that replays happened.
    logging.getLogger("replay_logging_app.every").info("entered %s", context.instance_id)
    if not context.is_replaying:
        logging.info("starting %s", context.instance_id)
    results = []
    for step in range(3):
        result = yield context.call_activity("shout", f"step {step} of {context.instance_id}")
        results.append(result)
        if not context.is_replaying:
            logging.info("step %d done: %s", step, result)
    return results


@myApp.activity_trigger(input_name="text")
def shout(text: str) -> str:
    logging.info("activity ran: %s", text)
    return text.upper()
