"""OpenTelemetry traces and metrics: an optional extra (``pip install durable-azure[otel]``).

Without the ``opentelemetry-api`` package every function here does nothing, and nothing
is written to storage for tracing. With it, spans and metrics go to whatever tracer and
meter providers the application configured (none configured: the API's no-op ones, and
again nothing is written).

**Spans** (tracer ``durable_azure``):

* ``create_orchestration:{name}`` (producer): ``start_new`` (and ``schedule_new``) in a
  client, a child of the caller's current span if it has one;
* ``orchestration:{name}`` (server): one per execution, from its start to its end,
  emitted when it ends (it spans episodes that may run in different processes);
* ``episode:{name}`` (internal): each episode of an execution: replay plus checkpoint;
* ``activity:{name}`` (server): each activity run, in whichever process runs it; a
  plain-function activity runs in a thread with this span current, so the user's own
  spans inside it nest under it.

Trace context travels in the messages, as DTFx carries it: the ``ParentTraceContext``
member (``{"TraceParent": <W3C traceparent>, "TraceState": ...}``) of the
``ExecutionStarted`` that starts an execution (set from the client's span, or from the
parent's episode for a sub-orchestration) and of each ``TaskScheduled`` sent to the
work-item queue or run in-process (set from the episode that scheduled it). The
orchestration and episode spans of an execution are children of its ``ExecutionStarted``
context; an activity's span is a child of the episode that scheduled it. One
orchestration with its activities and sub-orchestrations is therefore one trace, across
any number of worker processes. (The ``orchestration`` span is a sibling of its episodes,
not their parent: its id only exists when it ends, in the last episode's process.)

**Metrics** (meter ``durable_azure``):

* ``durable_azure.episode.duration`` (histogram, s): one episode, replay and checkpoint;
* ``durable_azure.episode.replayed_events`` (histogram): history events replayed by one
  episode (the replay count);
* ``durable_azure.message.age`` (histogram, s): how long a message waited in its queue
  before this worker received it (attribute ``queue``);
* ``durable_azure.queue.depth`` and ``durable_azure.queue.oldest_message_age`` (gauges,
  attribute ``queue``): sampled by a worker every ``WorkerOptions.queue_metrics_interval``
  seconds, off by default because each sample costs two requests per queue.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, ParamSpec

try:  # the optional extra
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _AVAILABLE = True
except ImportError:  # pragma: no cover - exercised by the no-extra install
    _AVAILABLE = False

__all__ = [
    "INSTRUMENTATION_NAME",
    "available",
    "current_trace_context",
    "orchestration_finished",
    "record_episode",
    "record_message_age",
    "set_queue_sample",
    "span",
]

#: The tracer's and meter's name.
INSTRUMENTATION_NAME = "durable_azure"

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")


def _harmless(record: Callable[_P, None]) -> Callable[_P, None]:
    """Recording must never fail what it records: the episode calling it has already
    checkpointed, and an exception would have its messages abandoned. (The OpenTelemetry
    API is built not to raise; a misbehaving SDK or exporter is logged, not raised.)"""

    @functools.wraps(record)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            logger.debug("telemetry: %s failed", record.__name__, exc_info=True)

    return guarded


#: A trace context as carried in messages: ``{"TraceParent": ..., "TraceState": ...}``.
TraceContext = Mapping[str, Any]


def available() -> bool:
    """True when the OpenTelemetry API is installed (spans and metrics are recorded if the
    application configured providers)."""
    return _AVAILABLE


if _AVAILABLE:
    _tracer = otel_trace.get_tracer(INSTRUMENTATION_NAME)
    _meter = otel_metrics.get_meter(INSTRUMENTATION_NAME)
    _propagator = TraceContextTextMapPropagator()
    _episode_duration = _meter.create_histogram(
        "durable_azure.episode.duration", unit="s", description="one episode: replay + checkpoint"
    )
    _replayed = _meter.create_histogram(
        "durable_azure.episode.replayed_events",
        unit="{event}",
        description="history events replayed by one episode",
    )
    _message_age = _meter.create_histogram(
        "durable_azure.message.age", unit="s", description="time a message waited in its queue"
    )
    #: The latest sample per queue: (depth, oldest visible message's age in s or None).
    _queue_samples: dict[str, tuple[int, float | None]] = {}

    def _observe_depth(_options: Any) -> list[Any]:
        return [
            otel_metrics.Observation(depth, {"queue": queue})
            for queue, (depth, _) in _queue_samples.items()
        ]

    def _observe_age(_options: Any) -> list[Any]:
        return [
            otel_metrics.Observation(age, {"queue": queue})
            for queue, (_, age) in _queue_samples.items()
            if age is not None
        ]

    _meter.create_observable_gauge(
        "durable_azure.queue.depth",
        callbacks=[_observe_depth],
        unit="{message}",
        description="approximate messages in the queue (sampled)",
    )
    _meter.create_observable_gauge(
        "durable_azure.queue.oldest_message_age",
        callbacks=[_observe_age],
        unit="s",
        description="age of the oldest visible message (sampled)",
    )


def _nanos(when: datetime | None) -> int | None:
    return int(when.timestamp() * 1e9) if when is not None else None


def _context_of(carried: TraceContext | None) -> Any:
    """The OpenTelemetry context a carried trace context names (an empty one for None)."""
    carrier = {}
    if carried and carried.get("TraceParent"):
        carrier["traceparent"] = str(carried["TraceParent"])
        if carried.get("TraceState"):
            carrier["tracestate"] = str(carried["TraceState"])
    return _propagator.extract(carrier, context=otel_context.Context())


def current_trace_context() -> dict[str, Any] | None:
    """The current span as a carried trace context, or None when no span is recording
    (then nothing is written to messages)."""
    if not _AVAILABLE:
        return None
    span_context = otel_trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    carried: dict[str, Any] = {"TraceParent": carrier["traceparent"]}
    if carrier.get("tracestate"):
        carried["TraceState"] = carrier["tracestate"]
    return carried


_CURRENT: Any = object()


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: TraceContext | Any | None = _CURRENT,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """A span current for the block, or nothing without OpenTelemetry.

    ``parent``: a carried trace context (None: a new trace); by default the caller's
    current span. ``kind``: ``internal``, ``server``, ``client``, ``producer`` or
    ``consumer``. An exception leaving the block marks the span as an error.
    """
    if not _AVAILABLE:
        yield None
        return
    context = None if parent is _CURRENT else _context_of(parent)
    with _tracer.start_as_current_span(
        name,
        context=context,
        kind=otel_trace.SpanKind[kind.upper()],
        attributes=dict(attributes or {}),
    ) as current:
        yield current


def mark_failed(current: Any, description: str) -> None:
    """Set an error status on a span from :func:`span` (no-op without OpenTelemetry)."""
    if _AVAILABLE and current is not None:
        current.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, description))


@_harmless
def orchestration_finished(
    name: str,
    parent: TraceContext | None,
    *,
    started: datetime,
    ended: datetime,
    status: str,
    attributes: Mapping[str, Any],
    failure: str | None = None,
) -> None:
    """Emit an execution's ``orchestration`` span, now that it has ended."""
    if not _AVAILABLE:
        return
    finished = _tracer.start_span(
        f"orchestration:{name}",
        context=_context_of(parent),
        kind=otel_trace.SpanKind.SERVER,
        attributes={**attributes, "durable_azure.runtime_status": status},
        start_time=_nanos(started),
    )
    if failure is not None:
        mark_failed(finished, failure)
    finished.end(end_time=_nanos(ended))


@_harmless
def record_episode(seconds: float, replayed_events: int, orchestration: str) -> None:
    """Record one episode's duration and replay count."""
    if not _AVAILABLE:
        return
    attributes = {"durable_azure.orchestration": orchestration}
    _episode_duration.record(seconds, attributes)
    _replayed.record(replayed_events, attributes)


@_harmless
def record_message_age(seconds: float, queue: str) -> None:
    """Record how long a received message waited in ``queue``."""
    if _AVAILABLE:
        _message_age.record(max(seconds, 0.0), {"queue": queue})


@_harmless
def set_queue_sample(queue: str, depth: int, oldest_age: float | None) -> None:
    """Store a queue's sampled depth and oldest message age for the gauges."""
    if _AVAILABLE:
        _queue_samples[queue] = (depth, oldest_age)
