"""What one instance cannot learn or share: the operator's environment, host paths, another's uid.

Real daemons, real kernel: each function looks for the thing with every means
a function has, and the test checks it found nothing.
"""

from __future__ import annotations

import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtimes
from tests.conftest import Api, Daemon, running

UID_BASE, UID_COUNT = 200_000, 65_536
FGD_SOURCE = str(Path(runtimes.__file__).resolve().parent.parent)


def run(api: Api, body: str, **settings) -> object:
    source = "def handler(event, context):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    response = api.invoke(api.deploy(source, **settings)["func_name"])
    assert response.headers["x-is-func-err"] == "false", response.text
    return response.json()


SECRET = f"operator-secret-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def secret_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon started from a shell that holds a secret in its environment."""
    with running(tmp_path_factory.mktemp("secret") / "state", env={"FGD_OPERATOR_SECRET": SECRET}) as d:
        yield d


def test_the_daemons_environment_never_reaches_a_function(secret_daemon: Daemon) -> None:
    body = f"""
        import ctypes, os
        secret = {SECRET!r}.encode()
        def read(path):
            try:
                with open(path, "rb") as handle:
                    return handle.read()
            except OSError as exc:
                return type(exc).__name__.encode()
        fields = read("/proc/self/stat").rsplit(b")", 1)[1].split()
        # proc(5): fields 48-51 are arg_start, arg_end, env_start, env_end (fields[0] is field 3).
        arg_start, env_start, env_end = int(fields[45]), int(fields[47]), int(fields[48])
        block = ctypes.string_at(env_start, env_end - env_start)
        start_blocks = ctypes.string_at(arg_start, env_end - arg_start)
        mem = b""
        try:
            with open("/proc/self/mem", "rb") as handle:
                handle.seek(env_start)
                mem = handle.read(env_end - env_start)
        except OSError:
            pass
        import posix
        return {{
            "environ": any(secret in v.encode() for v in os.environ.values()),
            "posix_environ": any(secret in v for v in posix.environ.values()),
            "proc_self_environ": secret in read("/proc/self/environ"),
            "proc_1_environ": secret in read("/proc/1/environ"),
            "memory_block": secret in block or secret in mem,
            "block_is_empty": block.strip(b"\\0") == b"",
            "cmdline": read("/proc/self/cmdline").decode(errors="replace"),
            "start_blocks": start_blocks.strip(b"\\0").decode(errors="replace"),
            "zygote_vars": sorted(k for k in os.environ if k in ("PYTHONPATH", "FGD_OPERATOR_SECRET")),
        }}
    """
    result = run(Api(secret_daemon), body)
    assert result["environ"] is False and result["posix_environ"] is False
    assert result["proc_self_environ"] is False
    assert result["proc_1_environ"] is False
    assert result["memory_block"] is False
    # Not only the secret: the whole block the zygote was started with is gone (PATH, PYTHONPATH).
    assert result["block_is_empty"] is True
    assert result["zygote_vars"] == []
    assert FGD_SOURCE not in result["cmdline"] and ".venv" not in result["cmdline"]
    assert FGD_SOURCE not in result["start_blocks"]


def test_the_zygote_starts_from_an_empty_environment(secret_daemon: Daemon) -> None:
    from tests.conftest import zygote_of

    # Zygotes start on first use (issue 12): run a function first.
    assert run(Api(secret_daemon), "return 1") == 1
    zygote = zygote_of(secret_daemon)
    assert zygote is not None
    environ = Path(f"/proc/{zygote}/environ").read_bytes()
    assert SECRET.encode() not in environ
    # The zygote forgot even the little it was given once Python had read it.
    assert environ.strip(b"\0") == b""


def test_concurrent_instances_run_as_different_unprivileged_uids(api: Api) -> None:
    source = """
        import os, time
        def handler(event, context):
            time.sleep(1)
            passwd = open("/etc/passwd").read()
            return {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
                    "passwd": [line for line in passwd.splitlines() if line.startswith("function:")]}
    """
    name = api.deploy(source, timeout=10)["func_name"]
    results: list[dict] = []

    def call() -> None:
        response = api.daemon.client().post(f"/functions/{name}/invocations", json={})
        results.append(response.json())

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2, results
    uids = {r["uid"] for r in results}
    assert len(uids) == 2, results
    for r in results:
        assert UID_BASE <= r["uid"] < UID_BASE + UID_COUNT
        assert r["gid"] == r["uid"] == r["euid"]
        # The sandbox's /etc/passwd names this instance's own uid.
        assert r["passwd"] == [f"function:x:{r['uid']}:{r['gid']}::/tmp:/usr/sbin/nologin"]


def test_mountinfo_shows_no_host_path(api: Api) -> None:
    state = api.daemon.state_dir
    body = """
        return {"mountinfo": open("/proc/self/mountinfo").read()}
    """
    name = api.deploy("def handler(e, c):\n    return 1\n")["func_name"]
    assert api.invoke(name).status_code == 200
    mountinfo = run(api, body)["mountinfo"]
    shas = [p.name for p in (state / "code").rglob("*") if len(p.name) == 64]
    assert shas, "expected extracted code trees in the state dir"
    assert str(state) not in mountinfo
    assert str(state.parent) not in mountinfo
    assert not [sha for sha in shas if sha in mountinfo]
    assert ".venv" not in mountinfo and FGD_SOURCE not in mountinfo
    # The code is still there, read-only.
    code = [line for line in mountinfo.splitlines() if line.split()[4] == "/opt/function/code"]
    assert len(code) == 1 and " ro," in f" {code[0].split()[5]},"


@pytest.mark.parametrize(
    ("source", "error_type"),
    [
        ("import no_such_module_anywhere\n", "Runtime.ImportModuleError"),
        ("import json\njson.loads('{')\n", "Runtime.ImportModuleError"),
        ("raise ValueError('at import')\n", "Runtime.ImportModuleError"),
        ("def handler(e, c):\n    return 1\n", "Runtime.HandlerNotFound"),
    ],
)
def test_import_errors_show_no_host_path_of_fgd(api: Api, source: str, error_type: str) -> None:
    settings = {"handler": "index.missing"} if error_type == "Runtime.HandlerNotFound" else {}
    name = api.deploy(source, **settings)["func_name"]
    response = api.invoke(name)
    body = response.json()
    assert body["errorType"] == error_type, body
    text = body["errorMessage"] + "\n".join(body["stackTrace"])
    assert FGD_SOURCE not in text
    assert "<frozen importlib" not in text
    assert str(api.daemon.state_dir) not in text
    if "ValueError" in source or "json" in source:
        # The function's own frame is kept, at its sandbox path.
        assert 'File "/opt/function/code/index.py"' in text, text


def test_a_uid_is_not_reused_while_its_instance_lives() -> None:
    from fgd.sandboxing import UidPool, UidsExhausted

    pool = UidPool(UID_BASE, 3)
    first, second, third = pool.take("a"), pool.take("b"), pool.take("c")
    assert len({first, second, third}) == 3
    assert pool.take("a") == first  # the same instance asks again: its own uid
    with pytest.raises(UidsExhausted, match="uid_count"):
        pool.take("d")
    pool.give_back("b")
    assert pool.take("d") == second  # only the uid whose instance is gone comes back
    pool.give_back("a")
    pool.give_back("c")
    # Round-robin: handed out from where the last one was, not the lowest free.
    assert pool.take("e") == third
    assert pool.take("f") == first
