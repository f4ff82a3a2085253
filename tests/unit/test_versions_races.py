"""Races between a trigger's creation and the deletion of the version or alias it binds to.

The store's worker thread is held while both requests start, so each waits where a slow disk
would make it wait; whatever the order, no trigger may end up bound to a qualifier that is gone
(it would fire into nothing, and deleting the alias past it breaks FSS.1154).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from fgd.errors import FgdError
from fgd.model import AliasRecord, FunctionRef
from fgd.store import Store
from fgd.triggers import Triggers
from fgd.versions import Versions, lookup
from tests.unit.test_store import record
from tests.unit.test_store_versions import KEY, version

TIMER = {"trigger_type_code": "TIMER", "event_data": {"name": "t", "schedule_type": "Rate", "schedule": "60m"}}


async def outcome(step) -> str:
    try:
        await step()
    except FgdError as error:
        return error.code
    return "ok"


@pytest.mark.parametrize("first", ["create", "delete"])
@pytest.mark.parametrize("qualifier", ["!prod", "v1"])
async def test_no_trigger_outlives_its_version_or_alias(tmp_path: Path, first: str, qualifier: str) -> None:
    store = Store(tmp_path / "fgd.db")
    await store.put(record("fn"))
    assert await store.publish(version("v1", 1.0)) == "ok"
    versions = Versions(store, "local")
    triggers = Triggers(store, lambda: None)
    triggers.qualifier_lock = versions.lock
    latest = store.get(KEY)
    await versions.create_alias(latest, {"name": "prod", "version": "v1"})
    target = lookup(store, FunctionRef(*KEY, qualifier))

    async def delete() -> None:
        if qualifier == "v1":
            await versions.delete_version(target)
        else:
            await versions.delete_alias(latest, "prod")

    steps = {"create": lambda: triggers.create(target, TIMER), "delete": delete}
    results: dict[str, str] = {}

    async def run(name: str) -> None:
        results[name] = await outcome(steps[name])

    await store._limiter.acquire()
    async with trio.open_nursery() as nursery:
        for name in (first, "delete" if first == "create" else "create"):
            nursery.start_soon(run, name)
            await trio.testing.wait_all_tasks_blocked()
        store._limiter.release()
    bound = [t for t in store.triggers.values() if t.qualifier == qualifier]
    gone = (qualifier == "v1" and "v1" not in store.versions.get(KEY, {})) or (
        qualifier == "!prod" and "prod" not in store.aliases.get(KEY, {})
    )
    assert not (bound and gone), (results, bound)
    # Each request either did its work or was told why (the deletion always wins for a version:
    # its triggers go with it; an alias with a trigger stays, FSS.1154).
    assert set(results.values()) <= {"ok", "FSS.1052", "FSS.1053", "FSS.1154"}, results
    assert "ok" in results.values(), results
    store.close()
    # The same after a restart: what is stored agrees.
    store = Store(tmp_path / "fgd.db")
    bound = [t for t in store.triggers.values() if t.qualifier == qualifier]
    assert not (bound and gone)
    store.close()


async def test_reserved_instances_checked_against_where_the_alias_points_now(tmp_path: Path) -> None:
    """A request looked the alias up, then the alias moved to a version with reserved instances of
    its own: the alias's reserved instances are refused (FunctionGraph: not on both)."""
    store = Store(tmp_path / "fgd.db")
    await store.put(record("fn"))
    assert await store.publish(version("v1", 1.0)) == "ok"
    assert await store.publish(version("v2", 2.0)) == "ok"
    versions = Versions(store, "local")
    latest = store.get(KEY)
    await versions.create_alias(latest, {"name": "prod", "version": "v1"})
    await versions.set_scaling(lookup(store, FunctionRef(*KEY, "v2")), reserved=1)
    seen = lookup(store, FunctionRef(*KEY, "!prod"))  # the request's view: prod -> v1
    await versions.update_alias(latest, "prod", {"version": "v2"})
    assert await outcome(lambda: versions.set_scaling(seen, reserved=1)) == "FSS.0400"
    assert store.aliases[KEY]["prod"].reserved == 0
    store.close()


async def test_one_alias_per_version_spares_aliases_that_stay(tmp_path: Path) -> None:
    """Two aliases on one version (a store written before FSS.1066): both stay editable where they
    are; neither may be joined by a third."""
    store = Store(tmp_path / "fgd.db")
    await store.put(record("fn"))
    assert await store.publish(version("v1", 1.0)) == "ok"
    assert await store.publish(version("v2", 2.0)) == "ok"
    for name in ("a", "b"):
        assert await store.put_alias(KEY, AliasRecord(name=name, version="v1", created=1.0, last_modified=1.0))
    versions = Versions(store, "local")
    latest = store.get(KEY)
    updated = await versions.update_alias(latest, "a", {"version": "v1", "description": "kept"})
    assert updated.description == "kept"
    await versions.create_alias(latest, {"name": "c", "version": "v2"})
    assert await outcome(lambda: versions.update_alias(latest, "c", {"version": "v1"})) == "FSS.1066"
    assert await outcome(lambda: versions.create_alias(latest, {"name": "d", "version": "v1"})) == "FSS.1066"
    store.close()
