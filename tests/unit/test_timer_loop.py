"""The timer loop's boundary: a trigger it cannot plan or fire is skipped alone, until it changes."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest
import trio

from fgd.model import Trigger
from fgd.store import Store
from fgd.triggers import Triggers
from tests.unit.test_store import record

KEY = ("p", "default", "fn")


def trigger(trigger_id: str, **event_data: object) -> Trigger:
    return Trigger(
        trigger_id=trigger_id,
        trigger_type_code="TIMER",
        trigger_status="ACTIVE",
        event_data=event_data,
        project_id="p",
        package="default",
        func_name="fn",
        created_time="2026-01-01T00:00:00Z",
        last_updated_time="2026-01-01T00:00:00Z",
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "fgd.db")
    yield s
    s.close()


def fired(store: Store) -> list[str]:
    rows = store._db.execute("SELECT payload FROM async_events ORDER BY created").fetchall()
    return [msgspec.json.decode(payload)["trigger_name"] for (payload,) in rows]


async def test_a_trigger_that_fails_is_skipped_and_the_others_fire(store: Store, caplog) -> None:
    await store.put(record("fn"))
    triggers = Triggers(store, lambda: None)
    # Put in after the start-up check, as a bug elsewhere could: the loop is the last line of defence.
    store.triggers["no-schedule"] = trigger("no-schedule", name="a", schedule_type="Cron")
    store.triggers["no-name"] = trigger("no-name", schedule_type="Cron", schedule="@every 1s")
    store.triggers["good"] = trigger("good", name="good", schedule_type="Cron", schedule="@every 1s")
    caplog.set_level(logging.ERROR, logger="fgd.triggers")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(triggers.run_timers)
        await trio.sleep(2.3)
        assert fired(store).count("good") >= 2
        logged = caplog.text
        assert "no-schedule" in logged and "while planning" in logged
        assert "no-name" in logged and "while firing" in logged
        # Fixed, it is planned again and fires.
        store.triggers["no-name"] = trigger("no-name", name="fixed", schedule_type="Cron", schedule="@every 1s")
        triggers._changed.set()
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert fired(store).count("fixed") >= 1
    assert fired(store).count("good") >= 3
