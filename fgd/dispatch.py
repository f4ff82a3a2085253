"""Delivering asynchronous invocations: lease due events, run them, settle them.

Events run through the same invoker and scheduler as synchronous requests,
at most `async_invoke.concurrency` at a time. Function errors (exceptions,
timeouts, out of memory) consume an attempt and are retried with exponential
backoff and jitter up to `max_async_retry_attempts`; platform refusals
(throttled, node full) are retried without consuming attempts; an event older
than `max_async_event_age_in_seconds` is discarded.
"""

from __future__ import annotations

import logging
import random
import time

import trio

from fgd.asyncqueue import AsyncEvent
from fgd.config import AsyncConfig
from fgd.destinations import Destinations
from fgd.errors import FgdError, Throttled, Unavailable
from fgd.invoker import Invoker, Outcome
from fgd.store import Store

log = logging.getLogger("fgd.dispatch")

IDLE_POLL = 0.2
LEASE_MARGIN = 60.0


class Dispatcher:
    def __init__(self, store: Store, invoker: Invoker, config: AsyncConfig, depth: list[int], region: str) -> None:
        self._depth = depth
        self.destinations = Destinations(store, region, self.notify)
        self._store = store
        self._invoker = invoker
        self._config = config
        self._wakeup = trio.Event()
        self._running = 0

    def notify(self) -> None:
        """A new event was queued: look now rather than at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        recovered = await self._store.run(self._store.queue.recover)
        if recovered:
            log.info("%d asynchronous invocations leased before a restart are queued again", recovered)
        async with trio.open_nursery() as nursery:
            while True:
                free = self._config.concurrency - self._running
                events = []
                if free > 0:
                    # The lease outlives the longest timeout; an event whose lease ran out is leased again.
                    events = await self._store.run(self._store.queue.lease, time.time(), free, 259200 + LEASE_MARGIN)
                for event in events:
                    self._running += 1
                    nursery.start_soon(self._deliver, event)
                if not events or self._running >= self._config.concurrency:
                    self._depth[0] = await self._store.run(self._store.queue.depth)
                    with trio.move_on_after(IDLE_POLL):
                        await self._wakeup.wait()
                    self._wakeup = trio.Event()

    async def _deliver(self, event: AsyncEvent) -> None:
        try:
            outcome = await self._attempt(event)
            record = self._store.get(event.key)
            if record is not None and event.status in ("SUCCESS", "FAIL", "DISCARD"):
                # Destination first, settle after: a crash in between re-runs the event and
                # notifies again (at least once), never settles it with no notification.
                condition = {"SUCCESS": "", "FAIL": "RetriesExhausted", "DISCARD": "EventAgeExceeded"}[event.status]
                await self.destinations.deliver(record, event, outcome, event.status == "SUCCESS", condition)
            await self._store.run(self._store.queue.settle, event)
        finally:
            self._running -= 1
            self._wakeup.set()

    async def _attempt(self, event: AsyncEvent) -> Outcome | None:
        record = self._store.get(event.key)
        now = time.time()
        if record is None:
            self._final(event, "DISCARD", "FSS.0404", "the function was deleted")
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

    @staticmethod
    def _final(event: AsyncEvent, status: str, code: str, message: str) -> None:
        event.status = status  # type: ignore[assignment]
        event.end_time = time.time()
        event.error_code, event.error_message = code, message
