"""The store's versions and aliases: one transaction per change, read back after a restart."""

from __future__ import annotations

from pathlib import Path

import msgspec

from fgd.model import AliasRecord, CodeRef, Trigger
from fgd.store import Store
from tests.unit.test_store import record

KEY = ("p", "default", "fn")


def version(name: str, at: float) -> object:
    return msgspec.structs.replace(record("fn"), version=name, last_modified=at, code=CodeRef("c" * 64, "d" * 128, 5))


def trigger(trigger_id: str, qualifier: str) -> Trigger:
    return Trigger(
        trigger_id=trigger_id,
        trigger_type_code="TIMER",
        trigger_status="ACTIVE",
        event_data={"name": trigger_id, "schedule_type": "Rate", "schedule": "1h"},
        project_id="p",
        package="default",
        func_name="fn",
        created_time="2026-01-01T00:00:00Z",
        last_updated_time="2026-01-01T00:00:00Z",
        qualifier=qualifier,
    )


async def test_publish_outcomes_and_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "fgd.db")
    assert await store.publish(version("v0", 1.0)) == "gone"  # no such function
    await store.put(record("fn"))
    assert await store.publish(version("v0", 1.0)) == "ok"
    assert await store.publish(version("v0", 2.0)) == "exists"
    for number in range(1, 19):
        assert await store.publish(version(f"v{number}", 2.0 + number)) == "ok"
    # 19 published and latest: the 20th version is the last one.
    assert await store.publish(version("v19", 30.0)) == "full"
    assert len(store.versions[KEY]) == 19
    # A published version's code counts as in use for the collector.
    assert "c" * 64 in store.code_in_use()
    store.close()


async def test_versions_aliases_and_bound_triggers_survive_a_restart_and_go_together(tmp_path: Path) -> None:
    store = Store(tmp_path / "fgd.db")
    await store.put(record("fn"))
    assert await store.publish(version("v2", 2.0)) == "ok"
    assert await store.publish(version("v1", 1.0)) == "ok"
    alias = AliasRecord(
        name="prod", version="v1", additional_version_weights={"v2": 30}, created=1.0, last_modified=1.0
    )
    assert await store.put_alias(KEY, alias)
    await store.put_trigger(trigger("t-alias", "!prod"))
    await store.put_trigger(trigger("t-latest", "latest"))
    store.close()

    store = Store(tmp_path / "fgd.db")
    # Oldest published first, whatever the order of the rows.
    assert list(store.versions[KEY]) == ["v1", "v2"]
    assert store.aliases[KEY]["prod"] == alias
    assert store.triggers["t-alias"].qualifier == "!prod"
    await store.delete_version(KEY, "v1", ["prod"], ["t-alias"])
    store.close()

    store = Store(tmp_path / "fgd.db")
    assert list(store.versions[KEY]) == ["v2"] and store.aliases.get(KEY, {}) == {}
    assert set(store.triggers) == {"t-latest"}
    # Deleting the function takes every version and alias along.
    assert await store.put_alias(KEY, alias)
    await store.delete(KEY)
    store.close()
    store = Store(tmp_path / "fgd.db")
    assert store.versions == {} and store.aliases == {}
    assert not await store.put_alias(KEY, alias)  # no function: nothing written
    store.close()
