"""Attacker pass (issue 15) from a Custom `bootstrap`: the native PID 1 and the pool's preparation
as a bootstrap sees them. The agent that serves the runtime API is the instance's worker (PID 2,
the same uid); the bootstrap its child. A pooled worker may have staged /etc files and rehearsed
before the bootstrap was started: none of it may be within the bootstrap's reach."""

from __future__ import annotations

import httpx

from tests.conftest import Api
from tests.integration.custom_support import PYTHON, deploy, script

BOOTSTRAP = script(
    f"""
    #!{PYTHON}
    import json, os, signal, urllib.request

    API = "http://" + os.environ["RUNTIME_API_ADDR"] + "/v1/runtime/invocation/"

    def outcome(action):
        try:
            action()
            return "ok"
        except OSError as exc:
            return exc.errno

    def look():
        fds = {{}}
        for fd in os.listdir("/proc/self/fd"):
            try:
                flags = int(open(f"/proc/self/fdinfo/{{fd}}").read().split("flags:")[1].split()[0], 8)
                fds[fd] = [os.readlink(f"/proc/self/fd/{{fd}}"), flags & 3]
            except (OSError, IndexError):
                pass
        return {{
            "uid": os.getuid(),
            "fds": fds,
            "tmp": sorted(os.listdir("/tmp")),
            "env": sorted(k for k in os.environ if "WARM" in k),
            "pid1": {{
                "fd": outcome(lambda: os.listdir("/proc/1/fd")),
                "exe": outcome(lambda: os.readlink("/proc/1/exe")),
                "mem": outcome(lambda: open("/proc/1/mem", "rb").close()),
                "kill": outcome(lambda: os.kill(1, signal.SIGKILL)),
                "stop": outcome(lambda: os.kill(1, signal.SIGSTOP)),
            }},
            "etc": {{n: outcome(lambda n=n: open(f"/etc/{{n}}", "r+").close()) for n in ("passwd", "group")}},
        }}

    while True:
        with urllib.request.urlopen(API + "request") as answer:
            event = json.loads(answer.read() or b"{{}}")
            rid = answer.headers["X-Cff-Request-Id"]
        if "exit" in event:
            os._exit(event["exit"])
        body = json.dumps(look()).encode()
        urllib.request.urlopen(urllib.request.Request(API + "response/" + rid, data=body, method="POST")).read()
    """
)


def test_a_bootstrap_reaches_neither_pid1_nor_the_preparation(api: Api) -> None:
    name = deploy(api, "Custom", {"bootstrap": BOOTSTRAP})
    response = api.invoke(name)
    assert response.status_code == 200 and response.headers["x-is-func-err"] == "false", response.text
    seen = response.json()
    assert seen["uid"] != 0
    assert seen["tmp"] == [] and seen["env"] == []
    # PID 1 is root's and not dumpable: nothing to list, read or signal.
    assert seen["pid1"] == {"fd": 13, "exe": 13, "mem": 13, "kill": 1, "stop": 1}, seen["pid1"]
    assert all(result in (13, 30) for result in seen["etc"].values()), seen["etc"]  # EACCES, EROFS
    for fd, (link, access) in seen["fds"].items():
        assert "fgd-pid1" not in link and not link.startswith(("/etc", "/tmp/.")), (fd, link)
        if access:
            assert link.startswith(("pipe:", "socket:", "/dev/null", "anon_inode:")), (fd, link)
    # Exit codes that read as signal deaths end the instance as an exit error, nothing more.
    for code in (137, 159, 255):
        told = api.invoke(name, {"exit": code}).json()
        assert told["errorType"] == "Runtime.ExitError", (code, told)
    assert api.invoke(name).status_code == 200
    assert httpx.get(f"{api.daemon.url}/healthz").status_code == 200
