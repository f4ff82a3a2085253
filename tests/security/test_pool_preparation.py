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

from tests.conftest import RUNTIME, Api, b64, make_zip, unique_name

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


SPLIT_LOOK = """
import errno, os, sys
import shared_dependency

def outcome(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as exc:
        return {"ok": False, "error": errno.errorcode[exc.errno]}

def handler(event, context):
    dependency = os.path.dirname(os.path.dirname(shared_dependency.__file__))
    return {
        "marker": shared_dependency.MARKER,
        "dependency_dir": os.listdir("/opt/function/dependency"),
        "code": sorted(os.listdir("/opt/function/code")),
        "write_code": outcome(lambda: open("/opt/function/code/new.py", "w")),
        "write_dependency": outcome(lambda: os.mkdir("/opt/function/dependency/new")),
        "sources": outcome(lambda: os.listdir("/opt/function/dependency/.sources")),
        "pid1_mountinfo": outcome(lambda: open("/proc/1/mountinfo").read()),
        "pid1_root": outcome(lambda: os.listdir("/proc/1/root/opt/function/dependency/.sources")),
        "pid1_ns": outcome(lambda: os.readlink("/proc/1/ns/mnt")),
        "mountinfo": open("/proc/self/mountinfo").read(),
    }
"""


def test_a_prepared_worker_gets_its_code_and_no_trace_of_the_sources(api: Api) -> None:
    """Code and dependencies come from the state dir's bind, which is gone before the function
    runs, from its own mountinfo and from PID 1's (any process may read another's mountinfo:
    the bind may not outlive the specialisation in any namespace of the sandbox)."""
    files = {"shared_dependency/__init__.py": "MARKER = 'from the dependency'\n"}
    body = {"name": unique_name("dep"), "runtime": RUNTIME, "depend_type": "zip", "depend_file": b64(make_zip(files))}
    dependency = api.http.post("/dependencies/version", json=body)
    assert dependency.status_code == 200, dependency.text
    name = api.deploy(textwrap.dedent(SPLIT_LOOK), depend_version_list=[dependency.json()["id"]])["func_name"]
    response = from_a_full_pool(api, name)
    assert response.headers["x-is-func-err"] == "false", response.text
    seen = response.json()
    # Code and dependency are there, read-only.
    assert seen["marker"] == "from the dependency"
    assert seen["code"] == ["index.py"]
    assert seen["write_code"] == {"ok": False, "error": "EROFS"}
    assert seen["write_dependency"]["ok"] is False
    # The sources' mount point is gone; PID 1's mountinfo names no host path either, and its
    # root and namespace are closed to the function.
    assert seen["sources"] == {"ok": False, "error": "ENOENT"}
    assert seen["pid1_mountinfo"]["ok"] is True
    assert seen["pid1_root"] == {"ok": False, "error": "EACCES"}
    assert seen["pid1_ns"] == {"ok": False, "error": "EACCES"}
    state = api.daemon.state_dir
    for mountinfo in (seen["mountinfo"], seen["pid1_mountinfo"]["value"]):
        assert str(state) not in mountinfo and str(state.parent) not in mountinfo
        assert "/.sources" not in mountinfo
    code = [line for line in seen["mountinfo"].splitlines() if line.split()[4] == "/opt/function/code"]
    assert len(code) == 1 and " ro," in f" {code[0].split()[5]},"
