"""Golden histories: record the history of a real run, replay it against today's code.

A change to an orchestrator, or to the replay engine, can strand instances that are
already running: their committed history no longer matches what the code does. A golden
history catches that in CI, before a deployment does. Record an instance once (against
Azurite or a real account), check the JSON file in, and replay it in a test::

    # once, by hand: run the orchestration, then
    events = await record_history(client.provider, instance_id)
    save_history("tests/golden/chain.json", events)

    # in CI
    def test_chain_still_replays():
        check_golden(chain, "tests/golden/chain.json")

**The file** is a small JSON document, written with ``indent=1`` and stable key order::

    {"format": "durable-azure-history/1", "orchestrator": "chain", "instanceId": "...",
     "input": ..., "expectedOutput": ..., "expectedStatus": "Completed",
     "expectedFailure": null, "events": [ ...DTFx queue-JSON event objects... ]}

The events are in the DTFx queue-JSON form (``$type``, integer ``EventType``, 7-digit
timestamps), one object per history row, oldest first; ``expectedFailure`` holds the
error type and message (and inner failure) of a Failed orchestration, without tracebacks.

**What a replay checks.** :func:`replay_history` splits the recorded history into its
episodes (``OrchestratorStarted`` ... ``OrchestratorCompleted``) and replays *every*
episode the way the worker ran it: ``run_episode`` gets the recorded events of all earlier
episodes as the committed history, and the episode's ``OrchestratorStarted`` plus the
message events it consumed (``ExecutionStarted``, ``TaskCompleted``, ``TaskFailed``,
``TimerFired``, ``EventRaised``, ...) as its new events, in the recorded batches — so a
fan-in whose 20 completions arrived over three episodes is replayed over the same three.
For each episode, in order, it then requires:

1. the engine replays the earlier episodes without a ``NonDeterministicOrchestrationError``
   (if it raises one, the engine's own text — position, expected, actual — is reported);
2. the engine accepts every message event the recording accepted (none dropped);
3. the actions the code produces now are the actions recorded in that episode, in order
   and one for one: ``TaskScheduled`` (same id, activity name compared case-insensitively
   as the engine does, same input), ``TimerCreated`` (same id and fire time),
   ``SubOrchestrationInstanceCreated`` (same id, name, instance id, input) and
   ``ExecutionCompleted`` (same status, same output — compared as decoded JSON values —
   and for a failure the same error type and message, inner failures included).

Timestamps, ``IsPlayed``, custom status and traceback text are not compared (tracebacks
carry file paths and line numbers). Inputs can be left out with ``compare_inputs=False``.
The first difference raises :class:`GoldenHistoryMismatch` (an ``AssertionError``) naming
the episode, what the recording holds and what the code produced instead.
:func:`check_golden` also compares the final outcome with the file's ``expectedStatus``,
``expectedOutput`` and ``expectedFailure``.

A recording normally ends with ``ExecutionCompleted``; one of an instance still running
(waiting for an event, say) replays the same way and ends Running.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from durable_azure.engine.history import (
    EventType,
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
    OrchestrationStatus,
    OrchestratorCompleted,
    OrchestratorStarted,
    SubOrchestrationInstanceCreated,
    TaskScheduled,
    TimerCreated,
    type_of,
)
from durable_azure.engine.replay import EpisodeResult, Orchestrator, run_episode
from durable_azure.errors import DurableAzureError, InstanceNotFoundError
from durable_azure.storage.messages import MessageFormatError, event_from_json, event_to_json
from durable_azure.storage.provider import AzureStorageProvider

__all__ = [
    "FORMAT",
    "GoldenHistory",
    "GoldenHistoryMismatch",
    "ReplayOutcome",
    "check_golden",
    "history_from_json",
    "history_to_json",
    "load_history",
    "record_history",
    "replay_history",
    "save_history",
]

#: The ``format`` value of the documents this version writes and reads.
FORMAT = "durable-azure-history/1"

#: Events an episode writes for the code's actions; every other event inside an episode
#: (besides its OrchestratorStarted/OrchestratorCompleted markers) came from a message.
_ACTION_TYPES = frozenset(
    {
        EventType.TaskScheduled,
        EventType.TimerCreated,
        EventType.SubOrchestrationInstanceCreated,
        EventType.EventSent,
        EventType.ExecutionCompleted,
    }
)

_NON_DETERMINISTIC = "NonDeterministicOrchestrationError"
_MAX_SHOWN = 200  # characters of a payload shown in a mismatch message


class GoldenHistoryMismatch(DurableAzureError, AssertionError):
    """Today's code does not reproduce a recorded history.

    An ``AssertionError``, so pytest reports it as a failed check, not as a crash.

    Attributes:
        episode: the 1-based number of the first episode that differs (``None`` when the
            difference is in the final outcome only).
        expected: what the recording holds there.
        actual: what the code produced instead.
    """

    def __init__(
        self, message: str, *, episode: int | None = None, expected: str = "", actual: str = ""
    ) -> None:
        super().__init__(message)
        self.episode = episode
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class GoldenHistory:
    """A golden-history document (see the module docs for the JSON form).

    Attributes:
        orchestrator: the orchestrator's registered name.
        instance_id: the recorded instance id (``new_uuid`` values depend on it).
        input: the orchestration input, decoded.
        expected_output: the output, decoded (``None`` unless Completed).
        expected_status: the final status of the recorded run.
        expected_failure: for a Failed run, ``{"errorType", "errorMessage",
            "innerFailure"}`` (no traceback); else ``None``.
        events: the recorded history, oldest first.
    """

    orchestrator: str
    instance_id: str
    input: Any
    expected_output: Any
    expected_status: OrchestrationStatus
    expected_failure: dict[str, Any] | None
    events: list[HistoryEvent] = field(repr=False)


@dataclass(frozen=True)
class ReplayOutcome:
    """How a replayed history ended.

    Attributes:
        status: the final status the code produced (Completed, Failed, Running, ...).
        output: the final output as plain JSON values (``None`` unless the last episode
            finished the execution).
        failure: why it failed, when Failed.
        episodes: the :class:`EpisodeResult` of every replayed episode, in order.
    """

    status: OrchestrationStatus
    output: Any
    failure: FailureDetails | None
    episodes: list[EpisodeResult] = field(repr=False)


# --- the JSON form -------------------------------------------------------------------------


def history_to_json(events: Sequence[HistoryEvent]) -> list[dict[str, Any]]:
    """The events as DTFx queue-JSON objects (plain JSON values), in order."""
    return [event_to_json(event) for event in events]


def history_from_json(data: Any) -> list[HistoryEvent]:
    """The events of :func:`history_to_json` output (a list of event objects).

    Raises:
        ValueError: ``data`` is not a list of history event objects.
    """
    if not isinstance(data, list):
        raise ValueError(f"a history must be a JSON list of events, not {type(data).__name__}")
    events: list[HistoryEvent] = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"history event {index} is not a JSON object")
        try:
            events.append(event_from_json(item))
        except MessageFormatError as exc:
            raise ValueError(f"history event {index}: {exc}") from exc
    return events


_UNSET: Any = object()


def save_history(
    path: str | os.PathLike[str],
    events: Sequence[HistoryEvent],
    *,
    orchestrator_name: str | None = None,
    instance_id: str | None = None,
    input: Any = _UNSET,
    output: Any = _UNSET,
    status: OrchestrationStatus | str | None = None,
) -> GoldenHistory:
    """Write a golden-history document to ``path`` and return it.

    Every keyword defaults to what the history itself records: the name, instance id and
    input of its ``ExecutionStarted``, and the status, output and failure of its
    ``ExecutionCompleted`` (Running when it has none).

    Raises:
        ValueError: a value is missing from both the arguments and the history, or
            ``instance_id`` contradicts the history's ``ExecutionStarted``.
    """
    events = list(events)
    started = next((e for e in events if isinstance(e, ExecutionStarted)), None)
    completed = next((e for e in reversed(events) if isinstance(e, ExecutionCompleted)), None)
    if started is not None and instance_id is not None and instance_id != started.instance_id:
        raise ValueError(
            f"instance_id {instance_id!r} is not the recorded one ({started.instance_id!r})"
        )
    name = orchestrator_name or (started.name if started else None)
    instance = instance_id or (started.instance_id if started else None)
    if not name or not instance:
        raise ValueError(
            "the history has no ExecutionStarted: pass orchestrator_name and instance_id"
        )
    if status is None:
        final = completed.orchestration_status if completed else OrchestrationStatus.Running
    else:
        final = _status(status)
    if input is _UNSET:
        input = _decoded(started.input) if started else None
    if output is _UNSET:
        output = _decoded(completed.result) if completed and not completed.failure_details else None
    failure = completed.failure_details if completed else None
    document: dict[str, Any] = {
        "format": FORMAT,
        "orchestrator": name,
        "instanceId": instance,
        "input": input,
        "expectedOutput": output,
        "expectedStatus": final.name,
        "expectedFailure": _failure_summary(failure),
        "events": history_to_json(events),
    }
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return _document(document, events)


def load_history(path: str | os.PathLike[str]) -> GoldenHistory:
    """Read a golden-history document written by :func:`save_history`.

    Raises:
        ValueError: the file is not such a document (or of a format this version does not
            read).
    """
    with open(path, encoding="utf-8") as file:
        try:
            document = json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise ValueError(
            f"{os.fspath(path)}: not a golden history (format {found!r}, expected {FORMAT!r})"
        )
    try:
        return _document(document, history_from_json(document.get("events")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)}: {exc}") from exc


def _document(document: dict[str, Any], events: list[HistoryEvent]) -> GoldenHistory:
    failure = document.get("expectedFailure")
    return GoldenHistory(
        orchestrator=str(document["orchestrator"]),
        instance_id=str(document["instanceId"]),
        input=document.get("input"),
        expected_output=document.get("expectedOutput"),
        expected_status=_status(document["expectedStatus"]),
        expected_failure=failure if isinstance(failure, dict) else None,
        events=events,
    )


def _status(value: OrchestrationStatus | str) -> OrchestrationStatus:
    if isinstance(value, OrchestrationStatus):
        return value
    try:
        return OrchestrationStatus[value]
    except KeyError:
        raise ValueError(f"unknown orchestration status {value!r}") from None


def _failure_summary(failure: FailureDetails | None) -> dict[str, Any] | None:
    """The comparable part of a failure: type and message, recursively (no traceback)."""
    if failure is None:
        return None
    return {
        "errorType": failure.error_type,
        "errorMessage": failure.error_message,
        "innerFailure": _failure_summary(failure.inner_failure),
    }


# --- recording -----------------------------------------------------------------------------


async def record_history(provider: AzureStorageProvider, instance_id: str) -> list[HistoryEvent]:
    """The committed history of an instance's current execution, oldest first.

    Pass the provider of a worker or client on the task hub that ran it
    (``client.provider``). Record finished instances: a running one's history is only a
    prefix of what it will hold.

    Raises:
        InstanceNotFoundError: the instance has no history.
    """
    loaded = await provider.load_history(instance_id)
    if not loaded.events:
        raise InstanceNotFoundError(f"instance {instance_id!r} has no history to record")
    return list(loaded.events)


# --- replaying -----------------------------------------------------------------------------


def _is_action(event: HistoryEvent) -> bool:
    return type_of(event) in _ACTION_TYPES


def _split_episodes(events: Sequence[HistoryEvent]) -> list[list[HistoryEvent]]:
    """The history's episodes: each from its OrchestratorStarted to its
    OrchestratorCompleted (or to the next OrchestratorStarted, for a cut-off one)."""
    episodes: list[list[HistoryEvent]] = []
    current: list[HistoryEvent] | None = None
    for index, event in enumerate(events):
        if isinstance(event, OrchestratorStarted):
            current = [event]
            episodes.append(current)
        elif current is None:
            raise ValueError(
                f"history event {index} ({type(event).__name__}) is outside any episode: "
                "every episode starts with OrchestratorStarted"
            )
        else:
            current.append(event)
            if isinstance(event, OrchestratorCompleted):
                current = None
    if not episodes:
        raise ValueError("the history holds no episode")
    return episodes


def replay_history(
    orchestrator: Orchestrator,
    events: Sequence[HistoryEvent],
    *,
    instance_id: str | None = None,
    compare_inputs: bool = True,
) -> ReplayOutcome:
    """Replay a recorded history episode by episode and check today's code reproduces it.

    See the module docs for exactly what is compared.

    Args:
        orchestrator: the orchestrator function as the code has it now.
        events: the recorded history (:func:`record_history`, :func:`load_history`).
        instance_id: the recorded instance id (default: the one in ``ExecutionStarted``).
        compare_inputs: also require the same activity and sub-orchestration inputs.

    Returns:
        The final status, output and failure the code produced, and every episode's result.

    Raises:
        GoldenHistoryMismatch: the first difference between the recording and the code.
        ValueError: ``events`` is not a history of episodes, or has no ExecutionStarted.
    """
    episodes = _split_episodes(events)
    if instance_id is None:
        started = next((e for e in events if isinstance(e, ExecutionStarted)), None)
        if started is None:
            raise ValueError("the history has no ExecutionStarted: pass instance_id")
        instance_id = started.instance_id
    committed: list[HistoryEvent] = []
    results: list[EpisodeResult] = []
    total = len(episodes)
    for number, episode in enumerate(episodes, 1):
        where = f"episode {number} of {total} (OrchestratorStarted at {_time(episode[0])})"
        inputs = [
            e for e in episode[1:] if not _is_action(e) and not isinstance(e, OrchestratorCompleted)
        ]
        recorded = [e for e in episode if _is_action(e)]
        result = run_episode(
            orchestrator,
            instance_id=instance_id,
            history=committed,
            new_events=[episode[0], *inputs],
        )
        _check_determinism(result, recorded, where, number)
        _check_accepted(result, inputs, where, number)
        produced = [e for e in result.new_events if _is_action(e)]
        _compare_actions(recorded, produced, where, number, compare_inputs=compare_inputs)
        # The next episode replays the recording, as the worker did (the two are equal up
        # to what is not compared, such as traceback text).
        committed.extend(episode)
        results.append(result)
    last = results[-1]
    return ReplayOutcome(
        status=last.status,
        output=_decoded(last.output) if last.is_complete else None,
        failure=last.failure,
        episodes=results,
    )


def check_golden(
    orchestrator: Orchestrator, path: str | os.PathLike[str], *, compare_inputs: bool = True
) -> ReplayOutcome:
    """Load a golden history, replay it (:func:`replay_history`) and compare the outcome
    with the file's ``expectedStatus``, ``expectedOutput`` and ``expectedFailure``.

    Raises:
        GoldenHistoryMismatch: the code does not reproduce the recording; the message
            starts with the file name.
    """
    golden = load_history(path)
    name = os.path.basename(os.fspath(path))
    try:
        outcome = replay_history(
            orchestrator,
            golden.events,
            instance_id=golden.instance_id,
            compare_inputs=compare_inputs,
        )
    except GoldenHistoryMismatch as exc:
        raise GoldenHistoryMismatch(
            f"{name}: {exc}", episode=exc.episode, expected=exc.expected, actual=exc.actual
        ) from None
    expected = (
        golden.expected_status.name,
        golden.expected_output,
        golden.expected_failure,
    )
    actual = (outcome.status.name, outcome.output, _failure_summary(outcome.failure))
    if expected != actual:
        shown_expected = _outcome_text(*expected)
        shown_actual = _outcome_text(*actual)
        raise GoldenHistoryMismatch(
            f"{name}: the replay ended differently from the recorded run\n"
            f"  expected (recorded): {shown_expected}\n"
            f"  actual (code now):   {shown_actual}",
            expected=shown_expected,
            actual=shown_actual,
        )
    return outcome


# --- comparing -----------------------------------------------------------------------------


def _mismatch(where: str, number: int, problem: str, expected: str, actual: str) -> None:
    raise GoldenHistoryMismatch(
        f"golden history mismatch in {where}: {problem}\n"
        f"  expected (recorded): {expected}\n"
        f"  actual (code now):   {actual}",
        episode=number,
        expected=expected,
        actual=actual,
    )


def _check_determinism(
    result: EpisodeResult, recorded: list[HistoryEvent], where: str, number: int
) -> None:
    failure = result.failure
    if failure is None or failure.error_type != _NON_DETERMINISTIC:
        return
    recorded_failure = next(
        (e.failure_details for e in recorded if isinstance(e, ExecutionCompleted)), None
    )
    if recorded_failure is not None and recorded_failure.error_type == _NON_DETERMINISTIC:
        return  # the recorded run failed the same way; the action comparison checks it
    _mismatch(
        where,
        number,
        "replaying the earlier episodes failed",
        "a replay that matches the recorded history",
        f"{_NON_DETERMINISTIC}: {failure.error_message}",
    )


def _check_accepted(
    result: EpisodeResult, inputs: list[HistoryEvent], where: str, number: int
) -> None:
    accepted = [
        e
        for e in result.new_events
        if not _is_action(e) and not isinstance(e, (OrchestratorStarted, OrchestratorCompleted))
    ]
    if accepted != inputs:
        _mismatch(
            where,
            number,
            "the engine no longer accepts every recorded message event",
            "; ".join(_describe_input(e) for e in inputs) or "no events",
            "dropped: " + ("; ".join(result.dropped) or "(unreported)"),
        )


def _compare_actions(
    recorded: list[HistoryEvent],
    produced: list[HistoryEvent],
    where: str,
    number: int,
    *,
    compare_inputs: bool,
) -> None:
    for index in range(max(len(recorded), len(produced))):
        want = recorded[index] if index < len(recorded) else None
        got = produced[index] if index < len(produced) else None
        if not _same_action(want, got, compare_inputs=compare_inputs):
            _mismatch(
                where,
                number,
                f"action {index + 1} differs (the recording has {_actions(len(recorded))} "
                f"here, the code {len(produced)})",
                _describe(want, compare_inputs=compare_inputs),
                _describe(got, compare_inputs=compare_inputs),
            )


def _actions(count: int) -> str:
    return f"{count} action" if count == 1 else f"{count} actions"


def _same_action(
    want: HistoryEvent | None, got: HistoryEvent | None, *, compare_inputs: bool
) -> bool:
    if want is None or got is None:
        return want is got
    if type_of(want) != type_of(got) or want.event_id != got.event_id:
        return False
    if isinstance(want, TaskScheduled) and isinstance(got, TaskScheduled):
        return want.name.lower() == got.name.lower() and (
            not compare_inputs or _same_payload(want.input, got.input)
        )
    if isinstance(want, TimerCreated) and isinstance(got, TimerCreated):
        return want.fire_at == got.fire_at
    if isinstance(want, SubOrchestrationInstanceCreated) and isinstance(
        got, SubOrchestrationInstanceCreated
    ):
        return (
            want.name.lower() == got.name.lower()
            and want.instance_id == got.instance_id
            and (not compare_inputs or _same_payload(want.input, got.input))
        )
    if isinstance(want, ExecutionCompleted) and isinstance(got, ExecutionCompleted):
        return (
            want.orchestration_status == got.orchestration_status
            and _same_payload(want.result, got.result)
            and _failure_summary(want.failure_details) == _failure_summary(got.failure_details)
        )
    # Action events this module does not model in detail: every member but the time.
    return _members(want) == _members(got)


def _members(event: HistoryEvent) -> dict[str, Any]:
    data = event_to_json(event)
    data.pop("Timestamp", None)
    data.pop("IsPlayed", None)
    return data


def _same_payload(a: str | None, b: str | None) -> bool:
    """Equal as decoded JSON values (so spacing and key order do not matter)."""
    return a == b or _decoded(a) == _decoded(b)


def _decoded(text: str | None) -> Any:
    """A payload as plain JSON values (no class hooks: documents hold plain JSON)."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # written by a tool that stored plain text


# --- describing ----------------------------------------------------------------------------


def _time(event: HistoryEvent) -> str:
    stamp: datetime = event.timestamp
    return stamp.isoformat()


def _shown(text: str | None) -> str:
    if text is None:
        return "null"
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _failure_text(failure: FailureDetails) -> str:
    text = failure.summary()
    if failure.inner_failure is not None:
        text += f" (inner: {failure.inner_failure.summary()})"
    return text


def _describe(event: HistoryEvent | None, *, compare_inputs: bool) -> str:
    if event is None:
        return "nothing"
    if isinstance(event, TaskScheduled):
        text = f"a call to activity {event.name!r} (TaskScheduled #{event.event_id})"
        return f"{text} with input {_shown(event.input)}" if compare_inputs else text
    if isinstance(event, TimerCreated):
        return f"a timer firing at {event.fire_at.isoformat()} (TimerCreated #{event.event_id})"
    if isinstance(event, SubOrchestrationInstanceCreated):
        text = (
            f"a call to sub-orchestrator {event.name!r} as instance {event.instance_id!r} "
            f"(SubOrchestrationInstanceCreated #{event.event_id})"
        )
        return f"{text} with input {_shown(event.input)}" if compare_inputs else text
    if isinstance(event, ExecutionCompleted):
        status = event.orchestration_status.name
        if event.failure_details is not None:
            return f"completion with status {status}: {_failure_text(event.failure_details)}"
        return f"completion with status {status} and output {_shown(event.result)}"
    return f"{type_of(event).name} #{event.event_id} {json.dumps(_members(event))}"


def _describe_input(event: HistoryEvent) -> str:
    task_id = getattr(event, "task_scheduled_id", getattr(event, "timer_id", None))
    name = getattr(event, "name", None)
    text = type_of(event).name
    if task_id is not None:
        text += f" for task #{task_id}"
    if name:
        text += f" {name!r}"
    return text


def _outcome_text(status: str, output: Any, failure: dict[str, Any] | None) -> str:
    if failure is not None:
        return f"{status}: {failure.get('errorType')}: {failure.get('errorMessage')}"
    return f"{status} with output {_shown(json.dumps(output))}"
