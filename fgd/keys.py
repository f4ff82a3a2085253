"""Access keys for AK/SK signatures: made, listed and removed by the admin, checked on requests.

Keys live in the store (table access_keys) and in memory: the daemon is the only
writer, and checking a signature must not touch the database. When a key was last
used is kept in memory and written in one batch a minute, not once per request.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import string
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import trio

from fgd.errors import Conflict, InvalidParameter, NotFound
from fgd.model import check_project
from fgd.store import Store

log = logging.getLogger("fgd.keys")

# Huawei Cloud's shapes: 20 upper-case letters and digits for the access key, 40 characters
# for the secret.
ACCESS_ALPHABET = string.ascii_uppercase + string.digits
SECRET_ALPHABET = string.ascii_letters + string.digits
ACCESS_LENGTH = 20
SECRET_LENGTH = 40
ACCESS_RE = re.compile(rf"^[A-Z0-9]{{{ACCESS_LENGTH}}}\Z")
DESCRIPTION_MAX = 255
MAX_KEYS_PER_PROJECT = 100
# last_used is written at most this often per key (seconds).
TOUCH_INTERVAL = 60.0


class AccessKey(msgspec.Struct, frozen=True):
    access: str
    secret: str
    project_id: str
    description: str
    created: float
    last_used: float = 0.0


def _readable(row: tuple) -> AccessKey | None:
    """A stored key as it must be to verify with, or None (logged): a bad row fails alone."""
    try:
        key = msgspec.convert(dict(zip(AccessKey.__struct_fields__, row, strict=False)), AccessKey)
    except msgspec.ValidationError as exc:
        log.error("access key %r in the store is unusable and left out: %s", str(row[0])[:40], exc)
        return None
    if not key.access or not key.secret:
        log.error("access key %r in the store has no access key or secret; left out", key.access[:40])
        return None
    return key


class NewKey(msgspec.Struct):
    """The answer to creating a key: the only time its secret is shown."""

    access: str
    secret: str
    project_id: str
    description: str
    created: str


class KeyInfo(msgspec.Struct):
    """A key as listed: never its secret."""

    access: str
    project_id: str
    description: str
    created: str
    last_used: str


def iso(epoch: float) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def random_text(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


class Keys:
    def __init__(self, store: Store, now: Callable[[], float]) -> None:
        self._store = store
        self._now = now
        self._keys: dict[str, AccessKey] = {}
        for row in store.load_keys():
            key = _readable(row)
            if key is not None:
                self._keys[key.access] = key
        # access -> when it was last used, not yet written.
        self._used: dict[str, float] = {}

    def lookup(self, access: str) -> AccessKey | None:
        return self._keys.get(access)

    def used(self, access: str) -> None:
        """A request signed with this key was accepted (in memory; `flush` writes it)."""
        self._used[access] = self._now()

    def last_used(self, key: AccessKey) -> float:
        return self._used.get(key.access, key.last_used)

    async def create(self, project_id: str, description: str = "") -> NewKey:
        check_project(project_id)
        if not isinstance(description, str) or len(description) > DESCRIPTION_MAX:
            raise InvalidParameter(f"description must be text of at most {DESCRIPTION_MAX} characters")
        if sum(1 for k in self._keys.values() if k.project_id == project_id) >= MAX_KEYS_PER_PROJECT:
            raise Conflict(
                f"project {project_id} has {MAX_KEYS_PER_PROJECT} access keys, the limit; remove unused ones "
                "with `fgd keys rm ACCESS`"
            )
        access = random_text(ACCESS_ALPHABET, ACCESS_LENGTH)
        while access in self._keys:
            access = random_text(ACCESS_ALPHABET, ACCESS_LENGTH)
        key = AccessKey(access, random_text(SECRET_ALPHABET, SECRET_LENGTH), project_id, description, self._now())
        await self._store.run(self._store.put_key, tuple(msgspec.structs.astuple(key)))
        self._keys[access] = key
        log.info("created access key %s for project %s", access, project_id)
        return NewKey(key.access, key.secret, key.project_id, key.description, iso(key.created))

    def list(self, project_id: str) -> list[KeyInfo]:
        check_project(project_id)
        found = sorted(
            (k for k in self._keys.values() if k.project_id == project_id), key=lambda k: (k.created, k.access)
        )
        return [KeyInfo(k.access, k.project_id, k.description, iso(k.created), iso(self.last_used(k))) for k in found]

    async def remove(self, project_id: str, access: str) -> None:
        check_project(project_id)
        key = self._keys.get(access)
        if key is None or key.project_id != project_id:
            shown = access if ACCESS_RE.match(access) else repr(access[:40])
            raise NotFound(f"project {project_id} has no access key {shown} (see `fgd keys ls --project {project_id}`)")
        # Stored first: if the write fails the key stays whole (and the caller gets the error),
        # never gone now but back after a restart. From the answer on, it is refused.
        await self._store.run(self._store.delete_key, access)
        self._keys.pop(access, None)
        self._used.pop(access, None)
        log.info("removed access key %s of project %s", access, project_id)

    def _take_used(self) -> list[tuple[float, str]]:
        used, self._used = self._used, {}
        rows = []
        for access, when in used.items():
            if access in self._keys:
                self._keys[access] = msgspec.structs.replace(self._keys[access], last_used=when)
                rows.append((when, access))
        return rows

    async def flush(self) -> None:
        """Write when each key was last used, for the keys used since the previous flush."""
        if self._used:
            await self._store.run(self._store.touch_keys, self._take_used())

    def flush_at_exit(self) -> None:
        """`flush`, in the calling thread: for shutdown, once nothing else uses the store."""
        if self._used:
            try:
                self._store.touch_keys(self._take_used())
            except sqlite3.Error as exc:
                log.warning("could not record when access keys were last used: %s", exc)

    async def run(self, interval: float = TOUCH_INTERVAL) -> None:
        """Flush every `interval` seconds (at most one write per key per interval)."""
        while True:
            await trio.sleep(interval)
            await self.flush()
