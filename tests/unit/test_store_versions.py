"""The store's versions and aliases: one transaction per change, read back after a restart."""

from __future__ import annotations

from pathlib import Path

import msgspec

from fgd.model import AliasRecord, CodeRef, Trigger
from fgd.store import MIGRATIONS, Store
from tests.unit.test_store import record

KEY = ("p", "default", "fn")
INSERT_VERSION = (
    "INSERT INTO versions (project_id, package, func_name, version, created, record) VALUES (?, ?, ?, ?, ?, ?)"
)


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


async def test_unusable_version_and_alias_rows_are_left_out_alone(tmp_path: Path, caplog) -> None:
    """Rows edited by hand: each bad one is logged and left out; the store opens with the rest."""
    store = Store(tmp_path / "fgd.db")
    await store.put(record("fn"))
    assert await store.publish(version("v1", 1.0)) == "ok"
    good = AliasRecord(name="prod", version="v1", created=1.0, last_modified=1.0)
    assert await store.put_alias(KEY, good)
    db = store._db
    encode = msgspec.json.encode
    rows = [
        # Not JSON; JSON of the wrong shape; not even text.
        ("bad-json", b"{not json"),
        ("bad-shape", b'{"version": 5}'),
        ("bad-type", 12345),
        # A record that says it is another version (latest itself), or another function's.
        ("v-liar", encode(version("latest", 2.0))),
        ("v-other", encode(msgspec.structs.replace(version("v-other", 2.0), func_name="someone-else"))),
    ]
    with db:
        for name, blob in rows:
            db.execute(
                INSERT_VERSION,
                (*KEY, name, 2.0, blob),
            )
        # A version and an alias of a function that is not there (its row gone or unreadable).
        orphan = msgspec.structs.replace(version("v1", 1.0), func_name="ghost", reserved=3)
        db.execute(
            INSERT_VERSION,
            ("p", "default", "ghost", "v1", 1.0, encode(orphan)),
        )
        db.execute(
            "INSERT INTO aliases (project_id, package, func_name, name, record) VALUES (?, ?, ?, ?, ?)",
            ("p", "default", "ghost", "prod", encode(msgspec.structs.replace(good, reserved=2))),
        )
        # An alias row whose record names another alias; one that is not JSON.
        db.execute(
            "INSERT INTO aliases (project_id, package, func_name, name, record) VALUES (?, ?, ?, ?, ?)",
            (*KEY, "beta", encode(msgspec.structs.replace(good, name="gamma"))),
        )
        db.execute(
            "INSERT INTO aliases (project_id, package, func_name, name, record) VALUES (?, ?, ?, ?, ?)",
            (*KEY, "broken", b"\xff\xfe"),
        )
    store.close()

    with caplog.at_level("ERROR", logger="fgd.store"):
        store = Store(tmp_path / "fgd.db")
    assert list(store.versions) == [KEY] and list(store.versions[KEY]) == ["v1"]
    assert store.versions[KEY]["v1"].version == "v1"
    assert list(store.aliases) == [KEY] and list(store.aliases[KEY]) == ["prod"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("bad-json", "bad-shape", "bad-type", "v-liar", "v-other", "ghost:v1", "beta", "broken"):
        assert name in logged, (name, logged)
    assert "ghost" in logged and logged.count("ignoring stored") >= 9, logged
    store.close()


async def test_migration_8_runs_once_and_a_migrated_store_opens_again(tmp_path: Path) -> None:
    """The store of the previous release (fixture) migrates once; opening it again (a restart,
    or a second daemon start after a crash) changes nothing and loses nothing."""
    fixture = Path(__file__).parent.parent / "fixtures" / "store-v7" / "fgd.db"
    path = tmp_path / "fgd.db"
    path.write_bytes(fixture.read_bytes())
    store = Store(path)
    assert store.schema_version == len(MIGRATIONS)
    legacy = next(key for key in store.functions if key[2] == "legacy")
    assert store.versions == {} and store.aliases == {}
    await store.put(msgspec.structs.replace(record("fn"), version="latest"))
    assert await store.publish(version("v1", 1.0)) == "ok"
    store.close()
    for _ in range(2):
        store = Store(path)
        assert store.schema_version == len(MIGRATIONS)
        assert legacy in store.functions and list(store.versions[KEY]) == ["v1"]
        columns = [row[1] for row in store._db.execute("PRAGMA table_info(async_events)")]
        assert columns.count("version") == 1 and columns.count("alias") == 1
        store.close()
