"""Request ids: random version-4 UUIDs, never repeated, also across a fork."""

from __future__ import annotations

import os
import uuid

from fgd.invocation import new_request_id


def test_request_ids_are_version_4_uuids_in_canonical_form() -> None:
    ids = [new_request_id() for _ in range(3000)]  # several refills of the random batch
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_request_id()  # the parent holds a batch of random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_request_id()
