"""Loading function apps written with azure-functions-durable (v2 programming model).

Everything here uses the real SDKs (azure-functions, azure-functions-durable): no mocks.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import pytest
from azure.functions import meta
from azure.functions.durable_functions import ActivityTriggerConverter

from durable_azure.activities import ActivityRunner
from durable_azure.engine.context import OrchestrationContext
from durable_azure.engine.history import TaskCompleted
from durable_azure.functions import (
    FunctionAppError,
    FunctionsOrchestrationContext,
    decode_activity_input,
    encode_activity_output,
    load_function_app,
)
from durable_azure.functions.http_triggers import route_paths
from durable_azure.http.payloads import client_binding

APPS = Path(__file__).resolve().parents[1] / "function_apps"


def kinds(spec: str) -> dict[str, tuple[str, str, str]]:
    adapter = load_function_app(spec)
    return {f.function_name: (f.name, f.trigger_type, f.trigger_param) for f in adapter.functions}


def test_function_chaining_is_enumerated() -> None:
    assert kinds(str(APPS / "function_chaining")) == {
        "http_start": ("http_start", "httpTrigger", "req"),
        "hello_orchestrator": ("hello_orchestrator", "orchestrationTrigger", "context"),
        "hello": ("hello", "activityTrigger", "city"),
    }


def test_function_name_decorator_names_activities() -> None:
    adapter = load_function_app(str(APPS / "fan_out_fan_in" / "function_app.py"))
    assert sorted(adapter.activities) == ["GetWorkBatch", "ProcessItem", "sum_outputs"]
    assert adapter.activities["GetWorkBatch"].user_function.__name__ == "get_work_batch"
    assert adapter.activities["GetWorkBatch"].accepts_context()
    assert not adapter.activities["ProcessItem"].accepts_context()
    assert adapter.activities["ProcessItem"].is_async
    (starter,) = adapter.http_functions.values()
    assert [b.name for b in starter.client_bindings] == ["client"]
    assert starter.trigger["methods"] == ["POST"]


def test_blueprint_functions_and_binding_overrides() -> None:
    adapter = load_function_app(str(APPS / "blueprint_app"))
    assert sorted(adapter.orchestrators) == ["GreetingOrchestration", "greet_all"]
    assert sorted(adapter.activities) == ["Shout", "join_greetings"]
    info = adapter.orchestrators["GreetingOrchestration"]
    assert info.function_name == "greeting_orchestrator"
    # The raw user generator, not the SDK's JSON handle.
    assert info.user_function.__name__ == "greeting_orchestrator"
    assert not hasattr(info.user_function, "orchestrator_function")
    assert adapter.activities["Shout"].function_name == "shout_activity"
    assert sorted(adapter.http_functions) == ["greeting_http", "http_start"]
    assert adapter.http_functions["greeting_http"].trigger["authLevel"] == "FUNCTION"
    durable = adapter.durable_app
    assert sorted(durable.orchestrators) == ["GreetingOrchestration", "greet_all"]
    assert sorted(durable.activities) == ["Shout", "join_greetings"]


def test_loading_twice_indexes_the_app_once() -> None:
    first = load_function_app(str(APPS / "blueprint_app"))
    second = load_function_app(str(APPS / "blueprint_app"))  # same module, same app object
    assert second.app is first.app
    assert [f.function_name for f in second.functions] == [f.function_name for f in first.functions]
    # MODULE:ATTR finds the same, already imported app.
    by_attr = load_function_app("function_app:app")
    assert by_attr.app is first.app
    with pytest.raises(ValueError, match="unique"):
        first.app.get_functions()  # what a second get_functions() would have done


def test_other_samples_enumerate() -> None:
    assert kinds(str(APPS / "human_interaction"))["approve"] == ("approve", "httpTrigger", "req")
    assert kinds(str(APPS / "eternal_counter")) == {
        "eternal_counter": ("eternal_counter", "orchestrationTrigger", "context"),
        "increment": ("increment", "activityTrigger", "value"),
    }


def test_entity_functions_are_refused_at_load_time() -> None:
    with pytest.raises(FunctionAppError, match=r"durable entities are not supported yet"):
        load_function_app(str(APPS / "entity_counter"))
    with pytest.raises(FunctionAppError, match=r"\(function 'Counter'\)"):
        load_function_app(str(APPS / "entity_counter"))


def write_app(directory: Path, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "function_app.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_no_app_and_two_apps_are_errors(tmp_path: Path) -> None:
    write_app(tmp_path / "none", "VALUE = 1\n")
    with pytest.raises(FunctionAppError, match="no function app found"):
        load_function_app(str(tmp_path / "none"))
    write_app(
        tmp_path / "two",
        """
        import azure.durable_functions as df
        one = df.DFApp()
        two = df.DFApp()
        """,
    )
    with pytest.raises(FunctionAppError, match="more than one function app"):
        load_function_app(str(tmp_path / "two"))
    with pytest.raises(FunctionAppError, match=r"no function_app\.py"):
        load_function_app(str(tmp_path / "missing"))
    with pytest.raises(FunctionAppError, match=r"not an azure\.functions"):
        load_function_app("json:dumps")


def test_async_orchestrator_is_refused(tmp_path: Path) -> None:
    path = write_app(
        tmp_path / "async_orch",
        """
        import azure.durable_functions as df
        app = df.DFApp()

        @app.orchestration_trigger(context_name="context")
        async def orch(context):
            return 1
        """,
    )
    adapter = load_function_app(str(path))
    with pytest.raises(FunctionAppError, match="async def"):
        _ = adapter.durable_app


# --- the orchestration context ---------------------------------------------------------------


def df_context(spec: str, **kwargs: Any) -> tuple[Any, FunctionsOrchestrationContext]:
    adapter = load_function_app(spec)
    ctx = OrchestrationContext("inst", input_text=kwargs.get("input_text"), parent_instance_id="p")
    ctx._current_utc_datetime = datetime(2026, 1, 2, tzinfo=UTC)
    return adapter, FunctionsOrchestrationContext(ctx, names=adapter._names)


def test_call_activity_accepts_decorated_functions() -> None:
    _, ctx = df_context(str(APPS / "blueprint_app"))
    module = __import__("greetings_blueprint")
    app_module = __import__("function_app")
    # A FunctionBuilder resolves to the name it is registered under (override included).
    assert ctx.call_activity(module.shout_activity, "x").name == "Shout"
    assert ctx.call_activity(app_module.join_greetings, []).name == "join_greetings"
    assert ctx.call_sub_orchestrator(module.greeting_orchestrator, "x").name == (
        "GreetingOrchestration"
    )
    retry = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=2)
    assert ctx.call_activity_with_retry("Shout", retry, "x", expected_type=str) is not None
    with pytest.raises(ValueError, match="without an associated Azure Functions trigger"):
        ctx.call_activity(len, 1)
    versioned = ctx.call_sub_orchestrator("GreetingOrchestration", "x", version="2")
    assert ctx._ctx._actions[versioned.id].version == "2"  # type: ignore[union-attr]
    with pytest.raises(NotImplementedError, match="entities"):
        ctx.call_entity(df.EntityId("Counter", "k"), "get")
    with pytest.raises(NotImplementedError, match="call_http"):
        ctx.call_http("GET", "https://example.org")


def test_context_properties_follow_df() -> None:
    _, ctx = df_context(str(APPS / "eternal_counter"), input_text='{"count": 2}')
    assert ctx.instance_id == "inst"
    assert ctx.parent_instance_id == "p"
    assert ctx.get_input() == {"count": 2}
    assert ctx.get_input(expected_type=dict) == {"count": 2}
    assert ctx.current_utc_datetime == datetime(2026, 1, 2, tzinfo=UTC)
    assert not ctx.is_replaying
    assert not ctx.will_continue_as_new
    ctx.continue_as_new({"count": 3})
    assert ctx.will_continue_as_new
    assert ctx.new_uuid() != ctx.new_uuid()
    assert vars(ctx.function_context) == {}
    ctx.set_custom_status({"a": 1})
    assert ctx.custom_status == {"a": 1}


class Point:
    def __init__(self, x: int) -> None:
        self.x = x

    @staticmethod
    def to_json(obj: Point) -> Any:
        return {"x": obj.x}

    @classmethod
    def from_json(cls, data: Any) -> Point:
        return cls(data["x"])


def test_get_input_with_expected_type_decodes_custom_objects() -> None:
    text = json.dumps({"__class__": "Point", "__module__": "nowhere", "__data__": {"x": 4}})
    _, ctx = df_context(str(APPS / "eternal_counter"), input_text=text)
    point = ctx.get_input(expected_type=Point)
    assert isinstance(point, Point)
    assert point.x == 4


# --- activity input and output, as df's ActivityTriggerConverter ------------------------------


def converter_decode(text: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # df_loads' one-time advisory
        return ActivityTriggerConverter.decode(
            meta.Datum(value=text, type="string"), trigger_metadata=None
        )


@pytest.mark.parametrize("text", ['"Tokyo"', '{"a": 1}', "null", "5", "[1, 2]", "true"])
async def test_activity_input_is_decoded_like_df(text: str) -> None:
    runner = ActivityRunner(None, lambda name: lambda value: value, None)  # type: ignore[arg-type]
    result = await runner.execute("echo", text, 0)
    assert isinstance(result, TaskCompleted)
    assert json.loads(result.result or "null") == converter_decode(text)
    assert decode_activity_input(text) == converter_decode(text)


def test_non_json_activity_input_falls_back_to_the_raw_string() -> None:
    assert converter_decode("Tokyo") == "Tokyo"
    assert decode_activity_input("Tokyo") == "Tokyo"


class OnlyToJson:
    def to_json(self) -> Any:
        return {"v": 1}


@pytest.mark.parametrize("value", [None, "Tokyo", 5, {"a": [1, None]}, Point(3), OnlyToJson()])
def test_activity_output_is_encoded_like_df(value: Any) -> None:
    expected = ActivityTriggerConverter.encode(value, expected_type=None).value
    assert json.loads(expected) == encode_activity_output(value)


def test_unserializable_activity_output_fails_like_df() -> None:
    with pytest.raises(ValueError, match="must be json serializable"):
        encode_activity_output(object())


async def test_activity_wrapper_passes_the_trigger_param_and_context() -> None:
    adapter = load_function_app(str(APPS / "fan_out_fan_in"))
    durable = adapter.durable_app
    runner = ActivityRunner(None, durable.get_activity, None)  # type: ignore[arg-type]
    batch = await runner.execute("GetWorkBatch", "2", 0)
    assert isinstance(batch, TaskCompleted)
    assert json.loads(batch.result or "") == [
        {"index": 0, "source": "GetWorkBatch"},
        {"index": 1, "source": "GetWorkBatch"},
    ]
    processed = await runner.execute("ProcessItem", '{"index": 4}', 1)  # async def
    assert isinstance(processed, TaskCompleted)
    assert processed.result == "50"


# --- HTTP helpers -----------------------------------------------------------------------------


def test_route_templates() -> None:
    assert route_paths("orchestrators/{functionName}") == ["/api/orchestrators/{functionName}"]
    assert route_paths("a/{x}/{y?}") == ["/api/a/{x}/{y}", "/api/a/{x}"]
    assert route_paths("items/{id:int}/{*rest}", prefix="") == ["/items/{id}/{rest:path}"]
    assert route_paths("greet") == ["/api/greet"]


def test_client_binding_works_with_the_sdk_client() -> None:
    binding = client_binding(
        base_url="http://localhost:7071/runtime/webhooks/durabletask",
        rpc_base_url="http://127.0.0.1:9/durabletask",
        task_hub="Hub1",
    )
    assert binding["rpcBaseUrl"] == "http://127.0.0.1:9/durabletask/"
    assert "code=" not in json.dumps(binding)
    client = df.DurableOrchestrationClient(json.dumps(binding))
    request = func.HttpRequest("POST", "http://example.org:8080/api/start", body=b"")
    response = client.create_check_status_response(request, "abc")
    assert response.status_code == 202
    body = json.loads(response.get_body())
    assert body["statusQueryGetUri"] == (
        "http://example.org:8080/runtime/webhooks/durabletask/instances/abc"
        "?taskHub=Hub1&connection=Storage"
    )
    assert body["sendEventPostUri"].startswith(
        "http://example.org:8080/runtime/webhooks/durabletask/instances/abc/raiseEvent/"
    )
