"""Delivering asynchronous invocations: lease due events, run them, settle them.

Events run through the same invoker and scheduler as synchronous requests,
at most `async_invoke.concurrency` at a time. Function errors (exceptions,
timeouts, out of memory) consume an attempt and are retried with exponential
backoff and jitter up to `max_async_retry_attempts`; platform refusals
(throttled, node full) are retried without consuming attempts; an event older
than `max_async_event_age_in_seconds` is discarded.

Each event is handled inside a boundary: an unexpected exception while it runs
is logged with the function and request id and settles that event FAIL with
the reason; the dispatcher goes on. Only the store's own failures (sqlite3
errors) propagate and stop the daemon. One function may hold at most
`per_function` of the slots, so a flood of one slow function leaves room for
the others. Finished events are deleted after `retention_days`, in batches.

Writes are grouped (fgd.groupcommit): the 202s of many invocations share one
transaction (durable before any of them is answered), and so do the outcomes
of events that finish while one is being written; a lease takes every free slot.
"""

from __future__ import annotations

import collections
import logging
import random
import sqlite3
import time
from collections.abc import Callable

import trio

from fgd.asyncqueue import AsyncEvent
from fgd.config import AsyncConfig
from fgd.destinations import Destinations
from fgd.errors import FgdError, Throttled, Unavailable
from fgd.groupcommit import GroupCommit
from fgd.invoker import Invoker, Outcome
from fgd.model import FunctionRecord
from fgd.store import Store
from fgd.versions import alias_view

log = logging.getLogger("fgd.dispatch")

IDLE_POLL = 0.2
LEASE_MARGIN = 60.0
# Rows deleted per transaction when pruning: a few milliseconds of the store's thread each,
# so API calls and log writes queued behind a large prune wait that long, not seconds.
PRUNE_BATCH = 500


class Dispatcher:
    def __init__(
        self,
        store: Store,
        invoker: Invoker,
        config: AsyncConfig,
        depth: list[int],
        region: str,
        on_outcome: Callable[[tuple[str, str, str], Outcome], None] | None = None,
    ) -> None:
        self._depth = depth
        # Counts each run in the metrics and statistics history (Metrics.invoked), as sync ones are.
        self._on_outcome = on_outcome
        self._store = store
        self._invoker = invoker
        self._config = config
        self._wakeup = trio.Event()
        # What the last lease proved about the due events (Lease.only), and when: forgotten when
        # events are queued or retried, and after IDLE_POLL (waiting events come due with time).
        self._only: frozenset | None = None
        self._only_since = 0.0
        self._changes = 0  # bumped whenever events may have come due: a lease running meanwhile proves nothing
        self._counted = 0.0
        self._enqueues: GroupCommit[AsyncEvent] = GroupCommit(store.run, store.queue.enqueue_many, "the event")
        self.destinations = Destinations(store, region, self.enqueue)
        # Events run and waiting for the loop to store their outcome.
        self._finished: list[AsyncEvent] = []
        self.turns = 0  # transactions of the loop (settle and lease), for fgd_async_writes
        self._running = 0
        self._running_by: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.per_function = config.per_function or max(1, config.concurrency // 2)

    def notify(self) -> None:
        """A new event was queued: look now rather than at the next poll."""
        self._forget_only()
        self._wakeup.set()

    def _forget_only(self) -> None:
        self._only = None
        self._changes += 1

    async def enqueue(self, event: AsyncEvent) -> None:
        """Queue `event`; returns once it is on disk (grouped with others arriving meanwhile)."""
        await self._enqueues.submit(event)
        # Counted again by the loop; until then full() errs on the side of refusing.
        self._depth[0] += 1
        self.notify()

    @property
    def counts(self) -> dict[str, int]:
        """Transactions and items of the grouped writes (for the metrics and the benchmark)."""
        return {
            "enqueue_transactions": self._enqueues.transactions,
            "enqueued": self._enqueues.items,
            "settle_lease_transactions": self.turns,
        }

    def full(self) -> bool:
        """Whether the queue holds max_queued events (as counted a few times a second, plus those queued since)."""
        return self._depth[0] >= self._config.max_queued

    async def run(self) -> None:
        requeued, malformed = await self._store.run(self._store.queue.recover)
        if requeued:
            log.info("%d asynchronous invocations leased before a restart are queued again", requeued)
        if malformed:
            log.error("%d stored asynchronous invocations are malformed and were settled FAIL", malformed)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._enqueues.run)
            nursery.start_soon(self._prune)
            while True:
                # One transaction per turn: the outcomes of the events that finished since the
                # last turn, and a lease for every free slot (theirs included).
                finished, self._finished = self._finished, []
                running_by = self._running_by.copy()
                running_by.subtract(event.key for event in finished)
                free = self._config.concurrency - (self._running - len(finished))
                events: list[AsyncEvent] = []
                if free > 0 or finished:
                    if time.monotonic() - self._only_since > IDLE_POLL:
                        self._forget_only()
                    only, changes = self._only, self._changes
                    # The lease outlives the longest timeout; an event whose lease ran out is leased again.
                    lease = await self._store.run(
                        self._store.queue.settle_and_lease,
                        finished,
                        time.time(),
                        max(free, 0),
                        259200 + LEASE_MARGIN,
                        {key: count for key, count in running_by.items() if count > 0},
                        self.per_function,
                        only,
                    )
                    if finished or lease.events or lease.given_up:
                        self.turns += 1  # something was written
                    # Settled: their slots are free now (not before: a slot counts until its outcome is stored).
                    for event in finished:
                        self._release(event)
                    if any(event.status == "WAIT" for event in finished):
                        # Retries, due again soon, maybe of a function the lease had ruled out.
                        self._forget_only()
                    elif self._changes == changes:  # nothing was queued or retried while it ran
                        if lease.only is not None and lease.only is not only:
                            self._only_since = time.monotonic()
                        self._only = lease.only
                    events = lease.events
                    for event in lease.given_up:
                        log.error(
                            "asynchronous invocation %s of %s: %s",
                            event.request_id,
                            event.func_name,
                            event.error_message,
                        )
                for event in events:
                    self._running += 1
                    self._running_by[event.key] += 1
                    nursery.start_soon(self._deliver, event)
                if (not events or self._running >= self._config.concurrency) and not self._finished:
                    # Counting walks an index of every waiting event: a few times a second at most,
                    # not once per finished event while a backlog drains.
                    if time.monotonic() - self._counted >= IDLE_POLL:
                        self._depth[0] = await self._store.run(self._store.queue.depth)
                        self._counted = time.monotonic()
                    if not self._finished:
                        with trio.move_on_after(IDLE_POLL):
                            await self._wakeup.wait()
                self._wakeup = trio.Event()

    def _release(self, event: AsyncEvent) -> None:
        self._running -= 1
        self._running_by[event.key] -= 1
        if self._running_by[event.key] <= 0:
            del self._running_by[event.key]

    async def _deliver(self, event: AsyncEvent) -> None:
        try:
            outcome = None
            try:
                outcome = await self._attempt(event)
            except Exception as exc:  # noqa: BLE001 - the boundary of one event (logged in _internal_failure)
                self._internal_failure(event, "running it", exc)
            # The destinations of the version or alias that ran (fgd.versions), else latest's.
            record = self._record_of(event) or self._store.get(event.key)
            if record is not None and event.status in ("SUCCESS", "FAIL", "DISCARD"):
                # Destination first, settle after: a crash in between re-runs the event and
                # notifies again (at least once), never settles it with no notification.
                condition = {"SUCCESS": "", "FAIL": "RetriesExhausted", "DISCARD": "EventAgeExceeded"}[event.status]
                try:
                    await self.destinations.deliver(record, event, outcome, event.status == "SUCCESS", condition)
                except FgdError as error:
                    # A destination that became unusable (its function deleted, its row edited).
                    reason = f"the destination was not notified: {error.message}"
                    event.error_message = f"{event.error_message}; {reason}" if event.error_message else reason
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error):
                        raise
                    log.exception(
                        "asynchronous invocation %s of %s: notifying its destination failed",
                        event.request_id,
                        event.func_name,
                    )
                    reason = f"notifying the destination failed: {type(exc).__name__}: {exc}"
                    event.error_message = f"{event.error_message}; {reason}" if event.error_message else reason
        finally:
            # Settled by the loop, with the next lease (its slot stays taken until then).
            self._finished.append(event)
            self._wakeup.set()

    def _internal_failure(self, event: AsyncEvent, step: str, exc: Exception) -> None:
        """The daemon, not the function, failed on this event: it settles FAIL with the reason."""
        if isinstance(exc, sqlite3.Error):
            raise exc
        log.exception(
            "asynchronous invocation %s of %s failed in the daemon while %s; settled FAIL",
            event.request_id,
            event.func_name,
            step,
        )
        self._final(event, "FAIL", "FSS.0500", f"internal error while {step}: {type(exc).__name__}: {exc}")

    async def _prune(self) -> None:
        """Delete finished events older than the retention, a batch at a time."""
        retention = self._config.retention_days * 86400
        # Often enough that a small retention (tests, small disks) is honoured within a tenth of it.
        interval = min(600.0, max(0.2, retention / 10))
        while True:
            removed = 0
            queue = self._store.queue
            for prune, limit in (
                (queue.prune, time.time() - retention),
                (queue.prune_beyond, self._config.max_finished),
            ):
                while True:
                    count = await self._store.run(prune, limit, PRUNE_BATCH)
                    removed += count
                    if count < PRUNE_BATCH:
                        break
                    await trio.sleep(0)  # let the API's and the log sink's store calls in between batches
            if removed:
                log.info(
                    "pruned %d finished asynchronous invocations (older than %g days, or beyond the newest %d)",
                    removed,
                    self._config.retention_days,
                    self._config.max_finished,
                )
            await trio.sleep(interval)

    async def _attempt(self, event: AsyncEvent) -> Outcome | None:
        latest = self._store.get(event.key)
        now = time.time()
        if latest is None or event.created < latest.created:
            # Gone, or deleted and created again since this event was queued: not this function's.
            self._final(event, "DISCARD", "FSS.0404", "the function was deleted")
            return None
        record = self._record_of(event)
        if record is None:
            # Not the function's own end (that is DISCARD): the version it was queued for is gone,
            # so it failed, and says why; as one whose version went while it waited to run.
            self._final(event, "FAIL", "FSS.1052", f"version {event.version} of the function was deleted")
            return None
        policy = record.async_config
        if now - event.created > policy.max_async_event_age_in_seconds:
            self._final(
                event,
                "DISCARD",
                "FSS.0408",
                f"older than max_async_event_age_in_seconds ({policy.max_async_event_age_in_seconds})",
            )
            return
        try:
            outcome = await self._invoker.invoke(record, event.payload, event.request_id)
        except (Throttled, Unavailable) as refusal:
            # The platform was busy: try again soon, without using up an attempt.
            event.status = "WAIT"
            event.not_before = time.time() + self._config.retry_base
            event.error_code, event.error_message = refusal.code, refusal.message
            return None
        except FgdError as error:
            self._final(event, "FAIL", error.code, error.message)
            return None
        event.attempts += 1
        if self._on_outcome is not None:
            self._on_outcome(record.key, outcome)
        if outcome.error is None:
            self._final(event, "SUCCESS", "", "")
        elif event.attempts <= policy.max_async_retry_attempts:
            event.status = "WAIT"
            delay = self._config.retry_base * 2 ** (event.attempts - 1) * random.uniform(0.5, 1.5)
            event.not_before = time.time() + delay
            event.error_code, event.error_message = outcome.error.error_type, outcome.error.error_message
        else:
            self._final(event, "FAIL", outcome.error.error_type, outcome.error.error_message)
        return outcome

    def _record_of(self, event: AsyncEvent) -> FunctionRecord | None:
        """The version resolved when the event was queued, through its alias if that still exists."""
        record = self._store.version(event.key, event.version)
        alias = self._store.aliases.get(event.key, {}).get(event.alias) if event.alias else None
        return alias_view(record, alias) if record is not None and alias is not None else record

    @staticmethod
    def _final(event: AsyncEvent, status: str, code: str, message: str) -> None:
        event.status = status  # type: ignore[assignment]
        event.end_time = time.time()
        event.error_code, event.error_message = code, message
