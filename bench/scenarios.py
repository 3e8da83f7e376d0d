"""The benchmark scenarios. Each runs on a fresh task hub (see :func:`bench.session.bench_hub`)
and returns its figures under the result keys it owns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.apps import EVENT_NAME, expected_events, expected_fan_out
from bench.session import (
    SETTLE_SECONDS,
    BenchHub,
    bench_hub,
    entity_time,
    latency_figures,
    millis,
    ops_per_orchestration,
    record_times,
    require_completed,
    run_one,
    wait_for_all,
    wait_for_instance,
)
from bench.workers import BenchError
from durable_azure import DurableClient, OrchestrationStatus
from durable_azure.engine.history import OrchestratorStarted

#: Activities per HelloSequence5.
HELLO_ACTIVITIES = 5
#: Partitions of the task hubs of ``workers_3_vs_1`` (two per worker with three workers).
SCALE_PARTITIONS = 6
#: External events in flight at once.
EVENT_CONCURRENCY = 16
#: The longest idle poll interval of the idle scenario's second measurement, seconds: the
#: engine's default without wake-ups (what polling alone costs for ~5 s pickups).
SHORT_IDLE_POLL = 5.0
#: Row polling intervals (seconds): for latencies, and for long waits.
FAST_POLL = 0.02
SLOW_POLL = 0.25


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is (``fanout_large`` None: fanout_10000 is skipped).

    ``scale_lease_seconds``: the partition lease of workers_3_vs_1's workers (None: the
    engine's default); shorter, three workers balance sooner (the smoke run's choice).
    """

    hello_instances: int
    single_runs: int
    fanout_small: int
    fanout_large: int | None
    events: int
    idle_seconds: float
    idle_settle_seconds: float
    scale_instances: int
    scale_lease_seconds: float | None = None


# The idle window starts ``idle_settle_seconds`` after the worker took its leases. At full
# size that is long enough for its pollers' backoff to reach the 90 s ceiling (~100 s from
# 50 ms, doubling), so the window shows what an idle worker costs per hour once idle;
# the shorter runs include the ramp and so read higher.
FULL = Sizes(1000, 50, 1000, 10_000, 1000, 300.0, 120.0, 600)
QUICK = Sizes(200, 20, 1000, None, 200, 60.0, 10.0, 150)
SMOKE = Sizes(20, 3, 50, None, 20, 3.0, 3.0, 30, scale_lease_seconds=6.0)

Figures = dict[str, Any]


# --- HelloSequence5 batches (hello_sequence5, workers_3_vs_1) -------------------------------


@dataclass(frozen=True)
class HelloBatch:
    instances: int
    seconds: float
    latencies_ms: list[float]
    ops: dict[str, int]
    cpu_s: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds


async def run_hello_batch(hub: BenchHub, instances: int) -> HelloBatch:
    """Start ``instances`` HelloSequence5 at once and wait for all; count the workers' ops
    and CPU and the client's ops for starting them."""
    await hub.reset_counters()
    ids = [f"hs5-{i:05d}" for i in range(instances)]
    await asyncio.gather(*(hub.client.start_new("hello_sequence5", i) for i in ids))
    client_ops = hub.client_ops()
    rows = await wait_for_all(hub.client, instances, what="hello_sequence5")
    await asyncio.sleep(SETTLE_SECONDS)  # the last messages are deleted after the row
    counters = await hub.read_counters()
    created = [entity_time(r, "CreatedTime") for r in rows]
    completed = [entity_time(r, "CompletedTime") for r in rows]
    ops = dict(counters.ops)
    for kind, n in client_ops.items():
        ops[kind] = ops.get(kind, 0) + n
    return HelloBatch(
        instances=instances,
        seconds=(max(completed) - min(created)).total_seconds(),
        latencies_ms=[millis(c, d) for c, d in zip(created, completed, strict=True)],
        ops=ops,
        cpu_s=counters.cpu_s,
    )


async def hello_sequence5(connection: str, sizes: Sizes) -> Figures:
    async with bench_hub(connection) as hub:
        batch = await run_hello_batch(hub, sizes.hello_instances)
    return {
        "hello_sequence5": {
            "instances": batch.instances,
            "seconds": round(batch.seconds, 3),
            "orchestrations_per_s": round(batch.per_second, 2),
            "activities_per_s": round(HELLO_ACTIVITIES * batch.per_second, 2),
            "latency_ms": latency_figures(batch.latencies_ms),
        },
        "storage_ops_per_orchestration": ops_per_orchestration(batch.ops, batch.instances),
        "cpu_s_per_orchestration": round(batch.cpu_s / batch.instances, 4),
    }


async def hello_throughput(connection: str, sizes: Sizes, workers: int) -> float:
    async with bench_hub(
        connection,
        workers=workers,
        partitions=SCALE_PARTITIONS,
        lease_seconds=sizes.scale_lease_seconds,
    ) as hub:
        return (await run_hello_batch(hub, sizes.scale_instances)).per_second


async def workers_3_vs_1(connection: str, sizes: Sizes) -> Figures:
    one = await hello_throughput(connection, sizes, workers=1)
    three = await hello_throughput(connection, sizes, workers=3)
    return {
        "workers_3_vs_1": {
            "ratio": round(three / one, 2),
            "one_worker_per_s": round(one, 2),
            "three_workers_per_s": round(three, 2),
        }
    }


# --- one instance at a time -------------------------------------------------------------------


async def single(connection: str, sizes: Sizes) -> Figures:
    latencies = []
    async with bench_hub(connection) as hub:
        for i in range(sizes.single_runs):
            record = await run_one(
                hub.client, "hello_sequence5", f"single-{i}", None, poll=FAST_POLL
            )
            latencies.append(millis(*record_times(record)))
    return {"single": {"latency_ms": latency_figures(latencies)}}


async def completed_output(client: DurableClient, instance_id: str) -> Any:
    return (await client.get_status(instance_id)).output


async def fan_out(connection: str, count: int) -> Figures:
    # Timed by the client, from the start call to the poll that sees it Completed: the
    # row's CompletedTime is the time of the episode that finished it, and with folding
    # that episode's checkpoint (here thousands of history rows) is written after it.
    async with bench_hub(connection) as hub:
        began = time.perf_counter()
        await run_one(hub.client, "fan_out", "fanout", count, poll=FAST_POLL)
        seconds = time.perf_counter() - began
        total = await completed_output(hub.client, "fanout")
    if total != expected_fan_out(count):
        raise BenchError(
            f"the fan-out of {count} returned {total!r}, not {expected_fan_out(count)}"
        )
    return {"n": count, "seconds": round(seconds, 3)}


async def fanout_1000(connection: str, sizes: Sizes) -> Figures:
    return {"fanout_1000": await fan_out(connection, sizes.fanout_small)}


async def fanout_10000(connection: str, sizes: Sizes) -> Figures:
    assert sizes.fanout_large is not None  # the runner skips it otherwise
    return {"fanout_10000": await fan_out(connection, sizes.fanout_large)}


async def raise_events(client: DurableClient, instance_id: str, count: int) -> None:
    """Raise events with the data 1..count, :data:`EVENT_CONCURRENCY` in flight at once."""
    slots = asyncio.Semaphore(EVENT_CONCURRENCY)

    async def raise_one(data: int) -> None:
        async with slots:
            await client.raise_event(instance_id, EVENT_NAME, data)

    await asyncio.gather(*(raise_one(i) for i in range(1, count + 1)))


async def external_events(connection: str, sizes: Sizes) -> Figures:
    count = sizes.events
    async with bench_hub(connection) as hub:
        client = hub.client
        await client.start_new("wait_events", "events", count)
        await wait_for_instance(
            client, "events", poll=FAST_POLL, until=lambda s: s is not OrchestrationStatus.Pending
        )
        first_raise = datetime.now(UTC)
        await raise_events(client, "events", count)
        record = require_completed(await wait_for_instance(client, "events", poll=SLOW_POLL))
        total = await completed_output(client, "events")
    if total != expected_events(count):
        raise BenchError(f"{count} events summed to {total!r}, not {expected_events(count)}")
    seconds = (record_times(record)[1] - first_raise).total_seconds()
    return {"external_events": {"events": count, "events_per_s": round(count / seconds, 2)}}


async def first_pickup_ms(client: DurableClient) -> float:
    """Start one HelloSequence5; ms from its CreatedTime to its first OrchestratorStarted."""
    record = await run_one(client, "hello_sequence5", "pickup", None, poll=FAST_POLL)
    history = await client.provider.load_history("pickup")
    started = next((e for e in history.events if isinstance(e, OrchestratorStarted)), None)
    if started is None:
        raise BenchError("the history of instance pickup has no OrchestratorStarted")
    return millis(record_times(record)[0], started.timestamp)


async def idle_window(connection: str, sizes: Sizes, max_poll_interval: float | None) -> Figures:
    """One idle worker's storage transactions per hour, then how soon it picks up a start
    from a client in another process (this one)."""
    async with bench_hub(connection, max_poll_interval=max_poll_interval) as hub:
        await asyncio.sleep(sizes.idle_settle_seconds)
        await hub.reset_counters()
        window_start = time.monotonic()
        await asyncio.sleep(sizes.idle_seconds)
        counters = await hub.read_counters()
        window = time.monotonic() - window_start
        pickup = await first_pickup_ms(hub.client)
    return {
        "settle_seconds": sizes.idle_settle_seconds,
        "idle_seconds": round(window, 1),
        "transactions_per_hour": round(sum(counters.ops.values()) * 3600 / window, 1),
        "first_pickup_ms": round(pickup, 1),
    }


async def idle(connection: str, sizes: Sizes) -> Figures:
    # With the engine's defaults (wake-ups, idle polls up to 90 s apart), and with idle
    # polls at most SHORT_IDLE_POLL apart (polling-only pickup times).
    figures = await idle_window(connection, sizes, None)
    figures["short_poll"] = {
        "max_poll_interval": SHORT_IDLE_POLL,
        **await idle_window(connection, sizes, SHORT_IDLE_POLL),
    }
    return {"idle": figures}


# --- the registry -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A scenario: how to run it and how long it may take at most (seconds)."""

    name: str
    run: Callable[[str, Sizes], Awaitable[Figures]]
    timeout: Callable[[Sizes], float]


SCENARIOS = (
    Scenario("hello_sequence5", hello_sequence5, lambda s: 300 + 1.0 * s.hello_instances),
    Scenario("single", single, lambda s: 120 + 15.0 * s.single_runs),
    Scenario("fanout_1000", fanout_1000, lambda s: 300 + 0.5 * s.fanout_small),
    Scenario("fanout_10000", fanout_10000, lambda s: 300 + 0.5 * (s.fanout_large or 0)),
    Scenario("external_events", external_events, lambda s: 300 + 0.5 * s.events),
    Scenario("idle", idle, lambda s: 600 + 2 * (s.idle_seconds + s.idle_settle_seconds)),
    Scenario("workers_3_vs_1", workers_3_vs_1, lambda s: 600 + 2.0 * s.scale_instances),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
