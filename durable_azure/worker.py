"""The worker: polls the task hub's queues and runs episodes and activities.

One asyncio loop drives everything: a poller per control queue (partition) and one for the
work-item queue. Each poll receives up to 32 messages; idle queues are polled with a
randomized exponential backoff, and a poller wakes at once when this process enqueues to
its queue. Plain-function activities run on a thread pool, ``async def`` ones on the loop.

On stop (``Worker.stop()``, or SIGTERM/SIGINT under :meth:`Worker.run_until_signal`) the
worker stops receiving, lets in-flight work finish for a grace period, and abandons what
is left so another worker picks it up at once. Nothing is lost either way: a message is
deleted only after its effects are committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_azure import logevents as ev
from durable_azure import telemetry
from durable_azure.activities import ActivityRunner
from durable_azure.app import DurableApp
from durable_azure.errors import StorageError
from durable_azure.runner import EpisodeRunner, LocalResult, LocalTask
from durable_azure.storage.names import MAX_MESSAGES_PER_RECEIVE
from durable_azure.storage.partitions import (
    LeaseOptions,
    PartitionChanges,
    PartitionManager,
    new_worker_id,
)
from durable_azure.storage.poison import DEFAULT_MAX_DEQUEUE_COUNT
from durable_azure.storage.primitives import StorageAccount
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.queues import (
    DEFAULT_VISIBILITY_TIMEOUT,
    ReceivedMessage,
    TaskHubQueue,
    UnreadableMessage,
)
from durable_azure.wake import WakeListener, WakeSender

logger = logging.getLogger(__name__)

#: Seconds :meth:`Worker.stop` waits for the cancelled partition lease loop.
LEASE_LOOP_STOP_TIMEOUT = 10.0

#: At most this many frames of a task's await chain in :meth:`Worker.snapshot`.
_MAX_FRAMES = 40

#: Default of ``WorkerOptions.max_local_activities``.
DEFAULT_MAX_LOCAL_ACTIVITIES = 10_000

#: Default of ``WorkerOptions.fold_window``, seconds, and its upper bound (the messages an
#: episode holds stay hidden meanwhile, and a crash re-runs what it folded).
DEFAULT_FOLD_WINDOW = 0.5
MAX_FOLD_WINDOW = 5.0

#: The longest wait between polls of an idle queue without wake-ups, seconds.
POLL_CEILING = 5.0
#: ... and with wake-ups, which bring a message sent from this machine (or from any
#: machine that reaches ``wake_host``) in at once: the polls are then only the safety
#: net for what datagrams miss (a sender on another machine, a lost datagram, a timer
#: set by the queue's previous owner). With 4 partitions an idle worker then makes about
#: 5 queues x 40 polls + 360 lease renewals = 560 requests an hour (docs/performance.md).
IDLE_POLL_CEILING = 90.0

#: Longest wait, seconds, before an episode retries checkpointing the results of local
#: activities after a storage failure (1, 2, 4, 8, then every 10 s while it lasts).
LOCAL_RETRY_MAX_DELAY = 10.0

#: Seconds after a delayed message's due time at which its queue is polled (the queue's
#: own clock may lag ours a little).
DUE_WAKE_SLACK = 0.05


@dataclass(frozen=True)
class WorkerOptions:
    """Tuning knobs of a worker.

    Attributes:
        max_concurrent_orchestrations: episodes running at once.
        max_concurrent_activities: activities running at once (also the thread pool size).
        min_poll_interval: first delay after an empty poll, seconds.
        max_poll_interval: longest delay between polls of an idle queue, seconds. By
            default :data:`IDLE_POLL_CEILING` (90 s) with wake-ups, whose datagrams then
            bring new messages in at once, and :data:`POLL_CEILING` (5 s) without.
        visibility_timeout: how long received messages stay hidden from other workers.
        shutdown_grace: seconds in-flight work may take to finish on stop.
        history_cache_size: histories kept in memory between episodes (0 disables).
        max_dequeue_count: deliveries after which a message that keeps failing is set
            aside in the task hub's poison container (its instance fails, naming it).
        partition_leases: share the control queues with other workers through the
            ``{hub}Partitions`` lease table (on by default; off only for tests or a
            worker that is certainly alone).
        leases: lease timings (DTFx defaults: 30 s lease, 10 s renew and acquire).
        max_local_activities: activities of its own orchestrations this worker takes
            in-process at once (queued for a slot or running) instead of sending them
            through the work-item queue; beyond it they go to the queue, where every
            worker shares them. 0 sends every activity through the queue (DTFx's
            flow). See docs/design.md for what a crash re-runs.
        fold_window: seconds an episode waits for the local activities it started
            before it checkpoints: those that finish in time go into the same history
            write (a chain of quick activities then costs one write, not one each); the
            others are checkpointed when they finish. 0 checkpoints at once.
        wake_ups: push wake-ups (:mod:`durable_azure.wake`): listen on a loopback UDP
            port published in this worker's partition rows, so a client or another
            worker that sends to a queue this worker polls wakes its poller at once; and
            wake the owners of queues this worker sends to. Also wakes a poller when a
            timer or delayed message it sent comes due. Polling goes on regardless (a
            lost wake-up only delays a message to the next poll).
        wake_host: the interface the wake-up listener binds: loopback by default, so
            only senders on this machine reach it. Workers and clients on other
            machines wake this one only if it binds an interface they can reach (e.g.
            ``0.0.0.0`` with ``wake_advertise_host``) on a network you trust; otherwise
            their messages wait for the next poll (``max_poll_interval``).
        wake_advertise_host: the IP published for senders; required when
            ``wake_host`` is a wildcard.
        queue_metrics_interval: seconds between samples of the depth and oldest
            message age of the queues this worker polls, for the OpenTelemetry gauges
            (:mod:`durable_azure.telemetry`). None (the default) takes no samples: each
            costs two requests per queue.
    """

    max_concurrent_orchestrations: int = 100
    max_concurrent_activities: int = (os.cpu_count() or 1) * 10
    min_poll_interval: float = 0.05
    max_poll_interval: float | None = None
    visibility_timeout: timedelta = DEFAULT_VISIBILITY_TIMEOUT
    shutdown_grace: float = 30.0
    history_cache_size: int = 1000
    max_dequeue_count: int = DEFAULT_MAX_DEQUEUE_COUNT
    partition_leases: bool = True
    leases: LeaseOptions = field(default_factory=LeaseOptions)
    max_local_activities: int = DEFAULT_MAX_LOCAL_ACTIVITIES
    fold_window: float = DEFAULT_FOLD_WINDOW
    wake_ups: bool = True
    wake_host: str = "127.0.0.1"
    wake_advertise_host: str | None = None
    queue_metrics_interval: float | None = None

    @property
    def poll_ceiling(self) -> float:
        """``max_poll_interval``, or its default for the ``wake_ups`` setting."""
        if self.max_poll_interval is not None:
            return self.max_poll_interval
        return IDLE_POLL_CEILING if self.wake_ups else POLL_CEILING

    def __post_init__(self) -> None:

        if self.max_concurrent_orchestrations < 1 or self.max_concurrent_activities < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.max_local_activities < 0:
            raise ValueError("max_local_activities must be 0 or more")
        if not 0 <= self.fold_window <= MAX_FOLD_WINDOW:
            raise ValueError(f"fold_window must be within 0..{MAX_FOLD_WINDOW} s")
        if not 0 < self.min_poll_interval <= self.poll_ceiling:
            raise ValueError("need 0 < min_poll_interval <= max_poll_interval")
        if self.max_dequeue_count < 1:
            raise ValueError("max_dequeue_count must be at least 1")
        if self.queue_metrics_interval is not None and self.queue_metrics_interval <= 0:
            raise ValueError("queue_metrics_interval must be more than 0 s (or None)")
        if self.wake_advertise_host is not None:
            try:
                ipaddress.ip_address(self.wake_advertise_host)
            except ValueError:
                raise ValueError(
                    f"wake_advertise_host must be an IP address, got {self.wake_advertise_host!r}"
                ) from None
        elif self.wake_host in ("", "0.0.0.0", "::"):
            raise ValueError(
                f"wake_host {self.wake_host!r} listens on every interface: also give "
                "wake_advertise_host, the IP other machines send wake-ups to"
            )


class _Backoff:
    """Randomized exponential backoff for polling an idle queue, woken by local sends."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.failures = 0
        self.wake = asyncio.Event()

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> None:
        self.failures += 1
        delay = min(
            self.maximum,
            self.minimum * (2 ** min(self.failures - 1, 20)) * random.uniform(0.8, 1.2),
        )
        # asyncio.timeout, not wait_for (which can swallow a cancellation on 3.11).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.wake.wait()
        if self.wake.is_set():
            self.wake.clear()
            self.failures = 0


@dataclass(eq=False)
class _Session:
    """One instance being worked on in this process: what waits for its next episode,
    the activities it runs in-process, and the anchor message kept while they run."""

    instance_id: str
    pending: list[ReceivedMessage]
    results: list[LocalResult] = field(default_factory=list)
    running: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    anchor: ReceivedMessage | None = None
    #: The messages the current episode is processing (abandoned if it is cancelled).
    in_episode: list[ReceivedMessage] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Loop time before which results kept from a failed episode are not retried (new
    #: messages still run at once, and take the results along).
    retry_at: float = 0.0
    #: Episodes in a row that failed to checkpoint local results.
    failures: int = 0
    #: Loop time the anchor's visibility was last extended.
    anchor_renewed_at: float = 0.0

    def take(self) -> tuple[list[ReceivedMessage], list[LocalResult]]:
        batch, results = self.pending, self.results
        self.pending, self.results = [], []
        return batch, results

    def seconds_to_retry(self, now: float) -> float:
        """0 if an episode should run now; else how long the kept results wait."""
        if self.pending or (self.results and now >= self.retry_at):
            return 0.0
        return self.retry_at - now if self.results else float("inf")


class Worker:
    """Runs an app's orchestrators and activities against its task hub.

    Args:
        app: the registry of orchestrators and activities.
        account: storage clients (default: opened from the app's settings, and closed
            when the worker stops).
        options: tuning knobs.
        **settings: overrides for the app's settings (``task_hub``, ``connection_string``,
            ``partition_count``).
    """

    def __init__(
        self,
        app: DurableApp,
        *,
        account: StorageAccount | None = None,
        options: WorkerOptions | None = None,
        **settings: Any,
    ) -> None:
        self.app = app
        self.settings = app.settings(**settings)
        self.options = options or WorkerOptions()
        self._owns_account = account is None
        self.account = account or self.settings.open_account()
        self.provider = AzureStorageProvider(self.account, self.settings.names)
        self._executor = ThreadPoolExecutor(
            max_workers=self.options.max_concurrent_activities,
            thread_name_prefix="durable-activity",
        )
        self.episodes = EpisodeRunner(
            self.provider,
            app.get_orchestrator,
            cache_size=self.options.history_cache_size,
            max_dequeue_count=self.options.max_dequeue_count,
        )
        self.activities = ActivityRunner(
            self.provider,
            app.get_activity,
            self._executor,
            visibility_timeout=self.options.visibility_timeout,
            max_dequeue_count=self.options.max_dequeue_count,
        )
        self._orchestration_slots = asyncio.Semaphore(self.options.max_concurrent_orchestrations)
        self._activity_slots = asyncio.Semaphore(self.options.max_concurrent_activities)
        self._backoffs: dict[str, _Backoff] = {}
        # The instances this process is working on (messages received for one of them go
        # to its session and run in its next episode).
        self._active: dict[str, _Session] = {}
        self._local_running = 0  # activities taken in-process, queued or running
        self._inflight: set[asyncio.Task[None]] = set()
        self._held: dict[asyncio.Task[None], list[ReceivedMessage]] = {}
        self._stopping = asyncio.Event()
        self._control_pollers: dict[str, asyncio.Task[None]] = {}
        self._work_item_poller: asyncio.Task[None] | None = None
        self.worker_id = new_worker_id()
        self.partitions: PartitionManager | None = None
        self._lease_loop: asyncio.Task[None] | None = None
        self._lease_stop = asyncio.Event()
        self.provider.add_send_listener(self._on_local_send)
        self.provider.add_delayed_send_listener(self._on_delayed_send)
        self._wake_listener: WakeListener | None = None
        self._wake_sender: WakeSender | None = None
        self._due_wakes: set[asyncio.TimerHandle] = set()
        self._sampler: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the task hub if needed and start polling.

        If it fails (wrong key, storage unreachable), everything it opened is closed
        before the error is raised; the worker cannot be started again.
        """
        try:
            await self._start()
        except BaseException:
            self._stopping.set()
            await self._cancel_lease_loop()
            for poller in [*self._control_pollers.values(), self._work_item_poller]:
                if poller is not None:
                    poller.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
            await self._close_wake_ups()
            if self._owns_account:
                await self.account.close()
            raise

    async def _start(self) -> None:
        await self.provider.create_if_not_exists()
        logger.info(
            "worker started on %s",
            self.settings.describe(),
            extra=ev.fields(ev.WORKER_STARTED, worker_id=self.worker_id),
        )
        queues = [*self.provider.control_queues, self.provider.work_items]
        for queue in queues:
            self._backoffs[queue.name] = _Backoff(
                self.options.min_poll_interval, self.options.poll_ceiling
            )
        wake_address = await self._open_wake_ups()
        if self.options.partition_leases:
            # Control queues are polled only while this worker holds their lease; the
            # first step runs here, so a worker that is alone starts polling at once.
            self.partitions = PartitionManager.for_account(
                self.account,
                self.settings.names,
                self.worker_id,
                options=self.options.leases,
                wake_address=wake_address,
            )
            await self.partitions.create_rows()
            await self._apply_partitions(await self.partitions.step())
            self._lease_loop = asyncio.create_task(
                self.partitions.run(self._apply_partitions, self._lease_stop),
                name="partition leases",
            )
        else:
            for queue in self.provider.control_queues:
                self._start_poller(queue.name)
        self._work_item_poller = asyncio.create_task(
            self._poll_work_items(), name="poll work items"
        )
        if self.options.queue_metrics_interval is not None and telemetry.available():
            self._sampler = asyncio.create_task(
                self._sample_queues(self.options.queue_metrics_interval), name="queue metrics"
            )

    async def _sample_queues(self, interval: float) -> None:
        """Every ``interval`` s: the depth and oldest visible message's age of each queue
        this worker polls, for the telemetry gauges. Failures only skip a sample."""
        while not self._stopping.is_set():
            polled = [*self._control_pollers, self.provider.work_items.name]
            for queue in [*self.provider.control_queues, self.provider.work_items]:
                if queue.name not in polled:
                    continue
                try:
                    depth = await queue.queue.approximate_count()
                    oldest = await queue.queue.peek(1)
                except StorageError as exc:
                    logger.debug("queue metrics of %s skipped: %s", queue.name, exc)
                    continue
                age = (
                    (datetime.now(UTC) - oldest[0].inserted_on).total_seconds() if oldest else None
                )
                telemetry.set_queue_sample(queue.name, depth, age)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stopping.wait()

    async def stop(self) -> None:
        """Stop receiving, let in-flight work finish (grace period), abandon the rest."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for backoff in self._backoffs.values():
            backoff.wake.set()
        # The grace period starts now and covers pollers blocked in a receive, too.
        deadline = asyncio.get_running_loop().time() + self.options.shutdown_grace
        pollers = [*self._control_pollers.values()]
        if self._work_item_poller is not None:
            pollers.append(self._work_item_poller)
        if pollers:
            _, blocked = await asyncio.wait(pollers, timeout=self.options.shutdown_grace)
            for poller in blocked:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
        if self._inflight:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(set(self._inflight), timeout=remaining)
            for task in pending:
                task.cancel()
            held = [m for t in pending for m in self._held.get(t, [])]
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.gather(
                *(m.queue.abandon(m.raw, 0.0) for m in held), return_exceptions=True
            )
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        await self._release_partitions()
        await self._close_wake_ups()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_account:
            await self.account.close()
        logger.info("worker stopped", extra=ev.fields(ev.WORKER_STOPPED, worker_id=self.worker_id))

    async def run_until_signal(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def snapshot(self) -> dict[str, Any]:
        """What this worker is doing right now, for diagnosing a stall: its pollers, the
        partitions it holds, and every instance in progress with where its task waits.
        Plain data (JSON-serializable); the shape may change between versions."""
        pollers = {**self._control_pollers}
        if self._work_item_poller is not None:
            pollers[self.provider.work_items.name] = self._work_item_poller
        partitions = self.partitions
        return {
            "worker_id": self.worker_id,
            "stopping": self._stopping.is_set(),
            "pollers": {name: _task_state(task) for name, task in pollers.items()},
            "partitions": {
                "owned": sorted(partitions.owned),
                "draining": sorted(partitions.draining),
            }
            if partitions is not None
            else None,
            "instances": {
                instance_id: {
                    "pending": len(session.pending),
                    "in_episode": len(session.in_episode),
                    "local_activities": sorted(session.running),
                    "anchor": session.anchor is not None,
                    "task": _task_state(session.task) if session.task else None,
                }
                for instance_id, session in self._active.items()
            },
            "tasks_in_flight": len(self._inflight),
            "local_activities": self._local_running,
        }

    # --- partitions ----------------------------------------------------------------------

    def _start_poller(self, name: str) -> None:
        running = self._control_pollers.get(name)
        if self._stopping.is_set() or (running is not None and not running.done()):
            return
        queue = self.provider.queue_named(name)
        self._control_pollers[name] = asyncio.create_task(
            self._poll_control(queue), name=f"poll {name}"
        )

    async def _stop_poller(self, name: str) -> None:
        """Let the poller of ``name`` finish its current receive and exit (it checks the
        lease before every receive)."""
        poller = self._control_pollers.pop(name, None)
        if poller is None:
            return
        backoff = self._backoffs.get(name)
        if backoff is not None:
            backoff.wake.set()
        await asyncio.gather(poller, return_exceptions=True)

    async def _apply_partitions(self, changes: PartitionChanges) -> None:
        """Follow a change of lease ownership: lost and released queues stop at once,
        draining ones are drained in the background, acquired ones start."""
        gone = [*changes.lost, *changes.released]
        for name in gone:
            await self._stop_poller(name)
        if gone:
            # Another worker moves these instances on now; cached histories would go stale.
            names = self.provider.names
            partitions = {names.control_queues.index(name) for name in gone}
            self.episodes.cache.drop_where(lambda i: names.partition_of(i) in partitions)
        for name in changes.draining:
            drain = asyncio.create_task(self._drain(name), name=f"drain {name}")
            self._inflight.add(drain)
            drain.add_done_callback(self._inflight.discard)
        for name in changes.acquired:
            self._start_poller(name)
        if changes.changed:
            logger.info(
                "partitions of %s: %s",
                self.worker_id,
                sorted(self.partitions.owned) if self.partitions else [],
                extra=ev.fields(ev.PARTITIONS_CHANGED, worker_id=self.worker_id),
            )

    async def _drain(self, name: str) -> None:
        """Hand a partition over: stop receiving, let its running episodes finish, then
        tell the lease manager it may release the lease."""
        await self._stop_poller(name)
        partition = self.provider.names.control_queues.index(name)
        deadline = asyncio.get_running_loop().time() + self.options.leases.drain_timeout
        while asyncio.get_running_loop().time() < deadline and any(  # noqa: ASYNC110
            self.provider.names.partition_of(instance_id) == partition
            for instance_id in self._active
        ):
            # No event marks "the last episode of this partition finished"; a hand-over
            # is rare, and polling the in-memory set briefly is cheap.
            await asyncio.sleep(0.05)
        if self.partitions is not None:
            self.partitions.mark_drained(name)

    async def _release_partitions(self) -> None:
        """On stop (after in-flight work is done): release every lease at once, so other
        workers take the partitions on their next step instead of after expiry."""
        await self._cancel_lease_loop()
        if self.partitions is not None:
            try:
                await self.partitions.release_all()
            except StorageError as exc:
                logger.warning(
                    "could not release partition leases (they will expire): %s",
                    exc,
                    extra=ev.fields(ev.LEASE_FAILED, worker_id=self.worker_id),
                )

    async def _cancel_lease_loop(self) -> None:
        """Cancel the lease loop and wait for it, but never forever: a stop that hangs is
        worse than leases left to expire."""
        loop_task = self._lease_loop
        if loop_task is None:
            return
        loop_task.cancel()
        done, _ = await asyncio.wait({loop_task}, timeout=LEASE_LOOP_STOP_TIMEOUT)
        if not done:
            logger.error(
                "the partition lease loop ignored cancellation for %.0f s; leaving it",
                LEASE_LOOP_STOP_TIMEOUT,
                extra=ev.fields(ev.WORKER_ERROR, worker_id=self.worker_id),
            )

    # --- wake-ups ------------------------------------------------------------------------

    async def _open_wake_ups(self) -> str | None:
        """Start the wake-up listener and sender (see ``WorkerOptions.wake_ups``); returns
        the address to publish in the partition rows. A listener that cannot bind is
        logged and skipped: wake-ups only speed things up."""
        if not self.options.wake_ups:
            return None
        names = self.settings.names
        listener = WakeListener(
            names,
            self._on_local_send,
            host=self.options.wake_host,
            advertise_host=self.options.wake_advertise_host,
        )
        try:
            await listener.start()
        except OSError as exc:
            logger.warning(
                "no wake-up listener (polling only): %s",
                exc,
                extra=ev.fields(ev.WAKE_UPS_UNAVAILABLE, worker_id=self.worker_id),
            )
            return None
        self._wake_listener = listener
        self._wake_sender = WakeSender.for_account(
            self.account, names, skip_address=listener.address
        )
        self.provider.add_send_listener(self._wake_sender.notify)
        return listener.address

    async def _close_wake_ups(self) -> None:
        for handle in self._due_wakes:
            handle.cancel()
        self._due_wakes.clear()
        if self._wake_sender is not None:
            await self._wake_sender.aclose()
        if self._wake_listener is not None:
            await self._wake_listener.close()

    def _on_local_send(self, queue_name: str) -> None:
        """A message was sent to ``queue_name`` (here, or by a wake-up): poll it now."""
        backoff = self._backoffs.get(queue_name)
        if backoff is not None:
            backoff.wake.set()

    def _on_delayed_send(self, queue_name: str, delay: float) -> None:
        """A timer or delayed message sent to a queue this worker polls: poll it when it
        comes due, however long the idle backoff has grown."""
        if queue_name not in self._backoffs or self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()

        def due() -> None:
            self._due_wakes.discard(handle)
            self._on_local_send(queue_name)

        handle = loop.call_later(delay + DUE_WAKE_SLACK, due)
        self._due_wakes.add(handle)

    # --- polling -------------------------------------------------------------------------

    async def _receive(
        self, queue: TaskHubQueue, max_messages: int
    ) -> tuple[list[ReceivedMessage], list[UnreadableMessage]]:
        try:
            return await queue.receive(max_messages, self.options.visibility_timeout)
        except (TimeoutError, StorageError, OSError) as exc:
            logger.warning(
                "receiving from %s failed: %s",
                queue.name,
                exc,
                extra=ev.fields(ev.RECEIVE_FAILED, worker_id=self.worker_id, queue=queue.name),
            )
            return [], []

    async def _poll_control(self, queue: TaskHubQueue) -> None:
        await self._keep_polling(queue, self._poll_control_once)

    async def _poll_work_items(self) -> None:
        await self._keep_polling(self.provider.work_items, self._poll_work_items_once)

    async def _keep_polling(
        self, queue: TaskHubQueue, poll: Callable[[TaskHubQueue, _Backoff], Awaitable[bool]]
    ) -> None:
        """Poll until stopped. A poller must never die: an unexpected error is logged and
        the queue is polled again after a backoff (a dead poller would strand its queue)."""
        backoff = self._backoffs[queue.name]
        while not self._stopping.is_set():
            try:
                if not await poll(queue, backoff):
                    return
            except Exception:
                logger.exception(
                    "unexpected error polling %s; polling again",
                    queue.name,
                    extra=ev.fields(ev.WORKER_ERROR, worker_id=self.worker_id, queue=queue.name),
                )
                await backoff.wait()

    async def _poll_control_once(self, queue: TaskHubQueue, backoff: _Backoff) -> bool:
        """One receive from a control queue; False once the worker is stopping or no
        longer holds the queue's lease (checked before every receive)."""
        if self.partitions is not None and not self.partitions.may_receive(queue.name):
            return False
        # Flow control: never hold more received-but-unprocessed work than we can run.
        await self._orchestration_slots.acquire()
        self._orchestration_slots.release()
        if self._stopping.is_set():
            return False  # stop() began while we waited for a slot: receive nothing
        received, unreadable = await self._receive(queue, MAX_MESSAGES_PER_RECEIVE)
        await self._set_aside(unreadable)
        if not received:
            await backoff.wait()
            return True
        backoff.reset()
        by_instance: dict[str, list[ReceivedMessage]] = {}
        for message in received:
            by_instance.setdefault(message.message.instance_id, []).append(message)
        for instance_id, batch in by_instance.items():
            session = self._active.get(instance_id)
            if session is not None:
                session.pending.extend(batch)
                session.wake.set()
            else:
                session = self._active[instance_id] = _Session(instance_id, batch)
                session.task = self._spawn(self._run_instance(session), [])
        return True

    async def _run_instance(self, session: _Session) -> None:
        """Run episodes for one instance until nothing waits for it: no message, and no
        activity it runs in-process. Between episodes the anchor message is kept hidden."""
        loop = asyncio.get_running_loop()
        session.anchor_renewed_at = loop.time()
        try:
            while True:
                session.wake.clear()
                if self._stopping.is_set() and session.pending:
                    # Stopping: finish what runs here, take nothing new.
                    batch, session.pending = session.pending, []
                    await _abandon_now(batch)
                wait = session.seconds_to_retry(loop.time())
                if wait <= 0:
                    await self._episode(session, *session.take())
                    continue
                if not session.running and not session.results:
                    if session.anchor is not None:
                        # Only when stopping: local activities that never started here are
                        # left; the anchor, visible again, brings them to another worker.
                        await _abandon_now([session.anchor])
                        session.anchor = None
                    return
                renew_in = session.anchor_renewed_at + self._anchor_renewal_interval - loop.time()
                try:
                    async with asyncio.timeout(max(0.0, min(wait, renew_in))):
                        await session.wake.wait()
                except TimeoutError:
                    pass
                if loop.time() >= session.anchor_renewed_at + self._anchor_renewal_interval:
                    await self._renew_anchor(session)
        except asyncio.CancelledError:
            # A stop that ran out of grace: hand everything back at once so another
            # worker takes over (the results of activities still running here are lost).
            for task in session.running.values():
                task.cancel()
            held = [*session.in_episode, *session.pending]
            if session.anchor is not None:
                held.append(session.anchor)
            await _abandon_now(held)
            raise
        finally:
            self._active.pop(session.instance_id, None)

    async def _episode(
        self, session: _Session, batch: list[ReceivedMessage], results: list[LocalResult]
    ) -> None:
        reserved = 0

        def run_locally(activity: str) -> bool:
            nonlocal reserved
            if (
                self._local_running + reserved >= self.options.max_local_activities
                or self._stopping.is_set()
                or self.app.get_activity(activity) is None
            ):
                return False
            reserved += 1
            return True

        deadline = asyncio.get_running_loop().time() + self.options.fold_window

        async def fold(tasks: list[LocalTask]) -> list[LocalResult]:
            return await self._run_until(session, tasks, deadline)

        session.in_episode = batch
        async with self._orchestration_slots:
            outcome = await self.episodes.process(
                session.instance_id,
                batch,
                results=results,
                anchor=session.anchor,
                running=set(session.running),
                run_locally=run_locally,
                fold=fold if self.options.fold_window > 0 else None,
            )
        session.in_episode = []
        session.anchor = outcome.anchor
        if outcome.retry:
            # Storage failed: keep the results (and the anchor) and try again after a
            # backoff, rather than lose them and run those activities a second time.
            session.results[:0] = outcome.retry
            session.failures += 1
            delay = min(LOCAL_RETRY_MAX_DELAY, 2 ** (session.failures - 1))
            session.retry_at = asyncio.get_running_loop().time() + delay
        elif batch or results:
            session.failures = 0
        # A task the episode handed back may have finished while it checkpointed (after
        # its fold window): its result waits for the next episode, it must not run again.
        finished = {(r.execution_id, r.event.task_scheduled_id) for r in session.results}
        for task in outcome.local:
            if (task.execution_id, task.scheduled.event_id) not in finished:
                self._start_local(session, task)

    async def _run_until(
        self, session: _Session, tasks: list[LocalTask], deadline: float
    ) -> list[LocalResult]:
        """Start ``tasks`` in-process and wait for them until ``deadline`` (loop time);
        returns (and takes from the session) the results of those that finished. The
        others run on; their results go to a later episode as usual."""
        for task in tasks:
            self._start_local(session, task)
        ids = {task.scheduled.event_id for task in tasks}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while ids & session.running.keys():
                    session.wake.clear()
                    await session.wake.wait()
        done = [r for r in session.results if r.event.task_scheduled_id in ids]
        if done:
            session.results = [r for r in session.results if r not in done]
        return done

    def _start_local(self, session: _Session, task: LocalTask) -> None:
        """Run an activity in-process; its result goes to the instance's next episode."""
        scheduled = task.scheduled
        if scheduled.event_id in session.running:
            return

        async def run() -> None:
            try:
                async with self._activity_slots:
                    if self._stopping.is_set():
                        return  # a stopping worker starts nothing new (see _run_instance)
                    event = await self.activities.execute(
                        scheduled.name,
                        scheduled.input,
                        scheduled.event_id,
                        instance_id=task.instance_id,
                        trace_context=scheduled.parent_trace_context,
                    )
                session.results.append(LocalResult(task.execution_id, event))
            finally:
                session.running.pop(scheduled.event_id, None)
                self._local_running -= 1
                session.wake.set()

        self._local_running += 1
        session.running[scheduled.event_id] = asyncio.create_task(
            run(), name=f"local activity {scheduled.name} of {session.instance_id}"
        )

    async def _renew_anchor(self, session: _Session) -> None:
        session.anchor_renewed_at = asyncio.get_running_loop().time()
        anchor = session.anchor
        if anchor is None:
            return
        try:
            raw = await anchor.queue.renew(anchor.raw, self.options.visibility_timeout)
        except StorageError as exc:
            # Transient, or the message is gone (it stayed hidden too long): the activities
            # still finish here; if this process dies meanwhile, they may run elsewhere too.
            logger.warning(
                "could not keep the anchor of %s hidden: %s",
                session.instance_id,
                exc,
                extra=ev.fields(
                    ev.RENEW_FAILED,
                    instance_id=session.instance_id,
                    queue=anchor.queue.name,
                    message_id=anchor.raw.id,
                ),
            )
            return
        session.anchor = replace(anchor, raw=raw)

    async def _poll_work_items_once(self, queue: TaskHubQueue, backoff: _Backoff) -> bool:
        """One receive from the work-item queue; False once the worker is stopping."""
        await self._activity_slots.acquire()
        if self._stopping.is_set():
            self._activity_slots.release()
            return False  # stop() began while every slot was busy: start nothing new
        free = 1
        # Take as many slots as are free right now (at least the one we waited for).
        while free < MAX_MESSAGES_PER_RECEIVE and not self._activity_slots.locked():
            await self._activity_slots.acquire()
            free += 1
        try:
            received, unreadable = await self._receive(queue, free)
            await self._set_aside(unreadable)
        except BaseException:
            for _ in range(free):
                self._activity_slots.release()
            raise
        for _ in range(free - len(received)):
            self._activity_slots.release()
        if not received:
            await backoff.wait()
            return True
        backoff.reset()
        for message in received:
            self._spawn(self._run_activity(message), [message])
        return True

    async def _run_activity(self, message: ReceivedMessage) -> None:
        try:
            await self.activities.process(message)
        except (TimeoutError, StorageError, OSError) as exc:
            logger.warning(
                "activity response not sent, work item abandoned: %s",
                exc,
                extra=ev.fields(
                    ev.ACTIVITY_RESPONSE_FAILED,
                    instance_id=message.message.instance_id,
                    execution_id=message.message.execution_id,
                    message_id=message.raw.id,
                ),
            )
            with contextlib.suppress(StorageError):
                await message.queue.abandon(message.raw)
        finally:
            self._activity_slots.release()

    async def _set_aside(self, unreadable: list[UnreadableMessage]) -> None:
        # Unreadable messages (garbage, truncated, a format from the future) are retried
        # with growing delays, then set aside in the poison container; the worker goes on.
        for bad in unreadable:
            try:
                if bad.raw.dequeue_count > self.options.max_dequeue_count:
                    await self.provider.poison.set_aside(
                        bad.queue.name, bad.raw, reason=f"unreadable: {bad.error}", instance_id=None
                    )
                    await bad.queue.delete(bad.raw)
                    logger.error(
                        "unreadable message %s in %s set aside in the poison container",
                        bad.raw.id,
                        bad.queue.name,
                        extra=ev.fields(
                            ev.POISON_MOVED, queue=bad.queue.name, message_id=bad.raw.id
                        ),
                    )
                else:
                    await bad.queue.abandon(bad.raw)
            except StorageError as exc:
                logger.warning(
                    "could not abandon or set aside message %s: %s",
                    bad.raw.id,
                    exc,
                    extra=ev.fields(ev.ABANDON_FAILED, queue=bad.queue.name, message_id=bad.raw.id),
                )

    @property
    def _anchor_renewal_interval(self) -> float:
        return max(1.0, self.options.visibility_timeout.total_seconds() / 2)

    def _spawn(self, work: Awaitable[None], held: list[ReceivedMessage]) -> asyncio.Task[None]:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception(
                    "unexpected error in worker task", extra=ev.fields(ev.WORKER_ERROR)
                )

        task = asyncio.create_task(guarded())
        self._inflight.add(task)
        self._held[task] = held
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._held.pop(task, None)


async def _abandon_now(messages: list[ReceivedMessage]) -> None:
    """Make messages visible again at once (errors logged: they reappear anyway)."""
    results = await asyncio.gather(
        *(m.queue.abandon(m.raw, 0.0) for m in messages), return_exceptions=True
    )
    for result in results:
        if isinstance(result, Exception):
            logger.warning(
                "could not abandon a message: %s", result, extra=ev.fields(ev.ABANDON_FAILED)
            )


def _task_state(task: asyncio.Task[Any]) -> dict[str, Any]:
    """Whether ``task`` runs, and where it waits (innermost frame last)."""
    if task.done():
        error = None if task.cancelled() else task.exception()
        return {"state": "cancelled" if task.cancelled() else "done", "error": repr(error)}
    frames: list[str] = []
    awaiting: Any = task.get_coro()
    while awaiting is not None and len(frames) < _MAX_FRAMES:
        frame = getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)
        if frame is None:
            frames.append(type(awaiting).__name__)  # a future or another awaitable
            break
        code = frame.f_code
        frames.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
    return {"state": "running", "where": frames}
