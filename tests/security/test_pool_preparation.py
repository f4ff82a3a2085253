"""Work moved off the cold-start path (issue 15) leaves nothing for the function to find.

A pooled worker now stages its own /etc user tables (root's descriptors to them, rewritten
at specialisation) and rehearses a specialisation and an invocation (a module imported from
/tmp, the environment emptied, a logger made). The function's first invocation must see none
of it: no descriptor, no file, no module, no environment variable, no logger level.
"""

from __future__ import annotations

import textwrap
import time

import httpx

from tests.conftest import Api

FIRST_LOOK = """
import errno, os, stat, sys

def handler(event, context):
    listing = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    fds = {}
    for fd in os.listdir(listing):
        if int(fd) != listing:
            try:
                fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except FileNotFoundError:
                pass  # listdir's own copy of the listing descriptor, closed since
    os.close(listing)
    etc = {}
    for name in ("passwd", "group"):
        info = os.stat(f"/etc/{name}")
        try:
            open(f"/etc/{name}", "a").close()
            writable = True
        except OSError as exc:
            writable = errno.errorcode[exc.errno]
        etc[name] = {"owner": info.st_uid, "mode": oct(stat.S_IMODE(info.st_mode)),
                     "content": open(f"/etc/{name}").read(), "writable": writable}
    return {
        "uid": os.getuid(),
        "fds": fds,
        "tmp": sorted(os.listdir("/tmp")),
        "modules": sorted(m for m in sys.modules if "warm" in m),
        "path": [p for p in sys.path if p.startswith("/tmp")],
        "environ": sorted(os.environ),
        "level": context.getLogger().getLevel(),
    }
"""


def from_a_full_pool(api: Api, name: str):
    """Invoke `name` once its runtime's pool is full and its members have had time to prepare
    (a start with the pool empty makes its instance on demand, which does not rehearse)."""
    # Any invocation starts the runtime's zygote, and with it the pool.
    assert api.invoke(api.deploy("def handler(e, c):\n    return 1\n")["func_name"]).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pools = httpx.get(f"{api.daemon.url}/healthz").json()["pool"]
        if pools and min(pools.values()) >= 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the pool was not refilled: {pools}")
    time.sleep(0.3)
    return api.invoke(name)


def test_a_fresh_instance_shows_nothing_of_its_preparation(api: Api) -> None:
    name = api.deploy(textwrap.dedent(FIRST_LOOK), user_data={"RUNTIME_LOG_LEVEL": "ERROR"})["func_name"]
    response = from_a_full_pool(api, name)
    assert response.headers["x-is-func-err"] == "false", response.text
    # The first invocation of a new instance: the one that came from the pool.
    assert '"coldStart":true' in response.headers["x-cff-invoke-summary"].replace(" ", "")
    seen = response.json()
    uid = seen["uid"]
    # stdio and the protocol socket only: none of root's descriptors to the staged /etc files.
    assert len(seen["fds"]) == 4, seen["fds"]
    assert next(link for fd, link in seen["fds"].items() if fd not in ("0", "1", "2")).startswith("socket:")
    # The rehearsal's module, its directory on /tmp and its import path are gone.
    assert seen["tmp"] == [], seen["tmp"]
    assert seen["modules"] == [] and seen["path"] == []
    assert "FGD_WARM" not in seen["environ"]
    # The logger's level is the function's own (RUNTIME_LOG_LEVEL), not the rehearsal's default.
    assert seen["level"] == 40
    assert uid != 0


def test_the_staged_user_tables_name_the_instance_and_stay_read_only(api: Api) -> None:
    name = api.deploy(textwrap.dedent(FIRST_LOOK).replace('"level":', '"etc": etc, "level":'))["func_name"]
    response = from_a_full_pool(api, name)
    assert response.headers["x-is-func-err"] == "false", response.text
    seen = response.json()
    uid = seen["uid"]
    passwd, group = seen["etc"]["passwd"], seen["etc"]["group"]
    assert passwd["content"] == (
        f"root:x:0:0:root:/root:/usr/sbin/nologin\nfunction:x:{uid}:{uid}::/tmp:/usr/sbin/nologin\n"
    )
    assert group["content"] == f"root:x:0:\nfunction:x:{uid}:\n"
    for table in (passwd, group):
        assert table["owner"] == 0 and table["mode"] == "0o644"
        assert table["writable"] in ("EROFS", "EACCES"), table
