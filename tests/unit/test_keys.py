"""Access keys: shapes, persistence, listing without secrets, batched last-used writes."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from fgd.errors import Conflict, InvalidParameter, NotFound
from fgd.keys import ACCESS_RE, DESCRIPTION_MAX, MAX_KEYS_PER_PROJECT, Keys
from fgd.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def open_keys(tmp_path, clock: Clock) -> tuple[Store, Keys]:
    store = Store(tmp_path / "fgd.db")
    return store, Keys(store, clock)


async def test_created_key_has_huawei_shapes_and_survives_a_restart(tmp_path) -> None:
    clock = Clock()
    store, keys = open_keys(tmp_path, clock)
    made = await keys.create("default", "ci deploys")
    assert ACCESS_RE.match(made.access)
    assert len(made.secret) == 40 and made.secret.isalnum()
    assert made.project_id == "default" and made.created == "2027-01-15T08:00:00Z"
    store.close()
    store, again = open_keys(tmp_path, clock)
    found = again.lookup(made.access)
    assert found is not None and found.secret == made.secret and found.project_id == "default"
    store.close()


async def test_listing_never_shows_secrets_and_is_per_project(tmp_path) -> None:
    store, keys = open_keys(tmp_path, Clock())
    made = await keys.create("default")
    await keys.create("other")
    listed = keys.list("default")
    assert [k.access for k in listed] == [made.access]
    assert not hasattr(listed[0], "secret") and made.secret not in repr(listed)
    store.close()


async def test_removed_key_is_gone_at_once_and_after_a_restart(tmp_path) -> None:
    store, keys = open_keys(tmp_path, Clock())
    made = await keys.create("default")
    with pytest.raises(NotFound):
        await keys.remove("other", made.access)  # another project's path cannot remove it
    await keys.remove("default", made.access)
    assert keys.lookup(made.access) is None
    with pytest.raises(NotFound):
        await keys.remove("default", made.access)
    store.close()
    store, again = open_keys(tmp_path, Clock())
    assert again.lookup(made.access) is None
    store.close()


async def test_last_used_is_written_in_batches_not_per_request(tmp_path) -> None:
    clock = Clock()
    store, keys = open_keys(tmp_path, clock)
    made = await keys.create("default")
    db = sqlite3.connect(tmp_path / "fgd.db")

    def stored() -> float:
        return db.execute("SELECT last_used FROM access_keys WHERE access=?", (made.access,)).fetchone()[0]

    for _ in range(1000):
        clock.now += 0.25
        keys.used(made.access)
    assert stored() == 0  # nothing written per request
    assert keys.list("default")[0].last_used == "2027-01-15T08:04:10Z"  # but listed at once
    await keys.flush()
    assert stored() == pytest.approx(clock.now)
    await keys.flush()  # nothing new: nothing to write
    store.close()


@pytest.mark.parametrize(
    ("project", "description", "error"),
    [
        ("../etc", "", InvalidParameter),
        ("default", "x" * (DESCRIPTION_MAX + 1), InvalidParameter),
        ("default", 5, InvalidParameter),
    ],
)
async def test_bad_key_requests_are_refused(tmp_path, project, description, error) -> None:
    store, keys = open_keys(tmp_path, Clock())
    with pytest.raises(error):
        await keys.create(project, description)
    store.close()


async def test_a_project_holds_a_bounded_number_of_keys(tmp_path) -> None:
    store, keys = open_keys(tmp_path, Clock())
    for _ in range(MAX_KEYS_PER_PROJECT):
        await keys.create("default")
    with pytest.raises(Conflict):
        await keys.create("default")
    await keys.create("other")  # per project
    store.close()


def test_the_database_holding_secrets_is_readable_by_root_only(tmp_path) -> None:
    path = tmp_path / "fgd.db"
    path.touch(mode=0o644)
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_hand_edited_key_rows_are_left_out_alone(tmp_path, caplog) -> None:
    clock = Clock()
    store, keys = open_keys(tmp_path, clock)
    good = await keys.create("default")
    store.close()
    db = sqlite3.connect(tmp_path / "fgd.db")
    with db:
        insert = "INSERT INTO access_keys (access, secret, project_id, description, created) VALUES (?, ?, ?, ?, ?)"
        db.execute(insert, ("BLOBSECRET", b"\x00\xff", "default", "", 0.0))
        db.execute(insert, ("EMPTYSECRET", "", "default", "", 0.0))
        db.execute(insert, ("TEXTTIME", "s" * 40, "default", "", "yesterday"))
    db.close()
    store, again = open_keys(tmp_path, clock)
    assert again.lookup(good.access) is not None
    for access in ("BLOBSECRET", "EMPTYSECRET", "TEXTTIME"):
        assert again.lookup(access) is None
        assert access in caplog.text
    store.close()
