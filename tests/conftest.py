"""Shared fixtures: a real `fgd serve` process on a free port with its own state dir."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

# Issue 14: a daemon a test starts outside the network namespaces of tests/network never sets up
# instance networking (bridge, firewall tables, forwarding) on this machine's own network.
os.environ.setdefault("FGD_NETWORK_OFF", "1")

RUNTIME = f"Python{sys.version_info.major}.{sys.version_info.minor}"


def _namespaces() -> dict[str, int]:
    return {kind: os.stat(f"/proc/thread-self/ns/{kind}").st_ino for kind in ("net", "mnt", "pid", "uts")}


@pytest.fixture(autouse=True)
def _test_process_keeps_its_namespaces() -> Iterator[None]:
    """A test that ran sandbox code in this process (not in a child) must not leave it elsewhere.

    Moved into another network namespace, every later test loses the daemons on loopback and
    fails far from the cause. (The network lab's module fixtures move in and out around their
    tests; this compares each test's start with its end.)
    """
    before = _namespaces()
    yield
    after = _namespaces()
    assert after == before, f"the test left the test process in other namespaces: {before} -> {after}"


_names = itertools.count()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_ports = random.Random()


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a daemon restarts on its ports, and one in
    that range could meanwhile be any socket's local port (another test's client connection; a
    clean-clone run lost a restart to "Address already in use" so)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = _ports.randrange(10000, low) if low > 10001 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port below the ephemeral range")


class Daemon:
    """One `fgd serve` process; restartable on the same state dir and port."""

    def __init__(self, state_dir: Path, config: str | None = None, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        # Extra environment variables for the daemon process (on top of the test's own).
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        # Every daemon gets its own gateway port, so several can run side by side.
        self.gateway_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        text = textwrap.dedent(config or "")
        if "[gateway]" not in text:
            text += f'\n[gateway]\nlisten = "127.0.0.1:{self.gateway_port}"\n'
        self.config_path: Path | None = state_dir.parent / f"{state_dir.name}.toml"
        self.config_path.write_text(text)
        self.process: subprocess.Popen | None = None
        # A cgroup directory (cgroup.procs inside) to start the daemon in, e.g. one with a memory limit.
        self.cgroup: Path | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "fgd", "serve", "--state-dir", str(self.state_dir)]
        argv += ["--listen", f"127.0.0.1:{self.port}"]
        if self.config_path:
            argv += ["--config", str(self.config_path)]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        env = None if self.env is None else {**os.environ, **self.env}
        procs = None if self.cgroup is None else self.cgroup / "cgroup.procs"
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=None if procs is None else lambda: procs.write_text(str(os.getpid())),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fgd serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"fgd serve did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def client(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/v2/default/fgs", headers={"X-Auth-Token": self.token}, timeout=timeout
        )


def read_head(sock: socket.socket) -> bytes:
    """What `sock` receives up to the end of an HTTP head (and whatever came with it), or until
    the peer closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# A module-level token: the same for every request one instance serves, new in each instance.
INSTANCE_TOKEN = "import os\nINSTANCE = os.urandom(8).hex()\n"


# Module code that leaves a `sleep` running in the instance. The process was
# exec'd with the function's environment, so its FGD_TEST_MARK (in user_data)
# shows in /proc/<pid>/environ: the host can tell whether the instance's
# processes are still there (the worker's own environ is its zygote's).
BACKGROUND_SLEEP = "import subprocess\nsubprocess.Popen(['sleep', '1000'])\n"


def marker() -> str:
    """A unique value to put in a function's environment, to find its processes on the host."""
    return f"m{uuid.uuid4().hex}"


def pids_with(mark: str) -> list[int]:
    """Host pids of exec'd processes whose environment holds FGD_TEST_MARK=<mark>."""
    needle = f"FGD_TEST_MARK={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def wait_none_with(mark: str, within: float = 2.0) -> bool:
    """True once no process carries `mark` (zombies count as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids_with(mark) if not _zombie(pid)]
        if not alive:
            return True
        time.sleep(0.02)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def zygote_of(daemon: Daemon) -> int | None:
    """Host pid of the daemon's Python zygote (None while it is being restarted)."""
    for child in psutil.Process(daemon.process.pid).children():
        try:
            if "runtimes.python.zygote" in " ".join(child.cmdline()):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def instance_cgroups(daemon_pid: int) -> list[str]:
    """The instance cgroups (any hierarchy) a daemon with this pid has left behind."""
    found = []
    # `fgd` beneath the daemon's own cgroup; `fgd-<pid>-<pid namespace>` where that is a
    # hierarchy's root. os.walk, not Path.glob: other daemons on the host remove cgroups while we look.
    for top, dirs, _files in os.walk("/sys/fs/cgroup", onerror=lambda _error: None):
        name = os.path.basename(top)
        if name == "fgd" or (name.startswith("fgd-") and name[4:].replace("-", "").isdigit()):
            found += [os.path.join(top, d) for d in dirs if d.startswith(f"{daemon_pid}-")]
            dirs[:] = []
    return found


def unique_name(prefix: str = "fn") -> str:
    return f"{prefix}{next(_names)}x{os.getpid()}"


class Api:
    """The daemon's HTTP API with helpers the tests share."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.http = daemon.client()

    def create(self, package: bytes, *, name: str | None = None, **settings) -> httpx.Response:
        """POST /functions with `package` as the code zip; the answer, whatever it is."""
        body = {
            "func_name": name or unique_name(),
            "runtime": RUNTIME,
            "handler": "index.handler",
            "code_type": "zip",
            "func_code": {"file": b64(package)},
            **settings,
        }
        return self.http.post("/functions", json=body)

    def deploy(self, source: str, *, name: str | None = None, files: dict | None = None, **settings) -> dict:
        """Create a function whose index.py is `source` (dedented), or from `files`."""
        response = self.create(make_zip(files or {"index.py": textwrap.dedent(source)}), name=name, **settings)
        assert response.status_code == 200, response.text
        return response.json()

    def route(self, name: str, path: str, **event_data: object) -> httpx.Response:
        """Add an APIG trigger: gateway requests to `path` invoke function `name`."""
        label = "r" + "".join(c for c in path if c.isalnum())[:50]
        body = {"trigger_type_code": "APIG", "event_data": {"name": label, "path": path, **event_data}}
        return self.http.post(f"/triggers/{name}", json=body)

    def invoke(self, name: str, event: object = None, headers: dict | None = None) -> httpx.Response:
        return self.http.post(
            f"/functions/{name}/invocations", json=event if event is not None else {}, headers=headers
        )


def ran_ms(response: httpx.Response) -> float:
    """How long the invocation ran by the daemon's account (X-Cff-Invoke-Summary), from the
    event's handover to its end: a timeout's lateness without the cold start before it."""
    return json.loads(response.headers["x-cff-invoke-summary"])["duration"]


def assert_tail_is_this_invocations(response) -> str:
    """X-Cff-Log-Type: tail on the second of two invocations of a function that prints "to stdout
    <n>", "to stderr", logs "from logger <n>" and runs a child that echoes "from a child process":
    the log header holds this invocation's lines (all four sources) and not the first's. Returns it."""
    text = base64.b64decode(response.headers["x-cff-function-log"]).decode()
    assert "to stdout 2" in text
    assert "to stderr" in text
    assert "[INFO] from logger 2" in text
    assert "from a child process" in text
    assert "to stdout 1" not in text
    assert f"RequestId: {response.headers['x-cff-request-id']}" in text
    return text


def skip_unless_served(api: Api, runtime: str, *, exact: bool = False) -> None:
    """Skip, saying why, when no interpreter on this machine serves `runtime` (exactly, if asked).

    The development and CI machines have pyenv's Pythons 3.6-3.13, so these tests run there; on a
    machine with only the system Python they cannot, and say so instead of failing.
    """
    served = api.http.get("/runtimes").json()["served_by"].get(runtime)
    if served is None or (exact and not served["exact"]):
        pytest.skip(f"no interpreter on this machine serves {runtime}{' exactly' if exact else ''} (pyenv install 3.x)")


@contextlib.contextmanager
def running(state_dir: Path, config: str | None = None, **options) -> Iterator[Daemon]:
    """A started daemon on `state_dir`, stopped when the block ends (for module- and session-wide fixtures)."""
    d = Daemon(state_dir, config, **options)
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    # Code from a URL is fetched from loopback test servers only (the default allows public addresses).
    config = """
        [instances]
        idle_keepalive = 30.0

        [code_fetch]
        allow = ["127.0.0.1/32"]
        read_timeout = 2.0

        # Agencies the SDK tests name (xrole / app_xrole must be defined on the node).
        [agencies.cff_admin]
        [agencies.app_agency]
    """
    with running(tmp_path_factory.mktemp("fgd") / "state", config) as d:
        yield d


@pytest.fixture(scope="session")
def api(daemon: Daemon) -> Api:
    return Api(daemon)


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that restart or kill it."""
    d = Daemon(tmp_path / "state")
    yield d
    if d.process is not None and d.process.poll() is None:
        d.stop(signal.SIGKILL)


def access_key(daemon: Daemon, project: str = "default", description: str = "test") -> dict:
    """A fresh access key ({"access", "secret", "project_id", ...}) made with the admin token."""
    response = httpx.post(
        f"{daemon.url}/v2/{project}/fgs/fgd/keys",
        json={"description": description},
        headers={"X-Auth-Token": daemon.token},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()


def sdk_client_for(daemon: Daemon, key: dict, project: str | None = None):
    """Huawei Cloud's stock FunctionGraph client, signing with `key` (AK/SK), pointed at `daemon`."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkfunctiongraph.v2 import FunctionGraphClient

    config = HttpConfig.get_default_config()
    # Plain http to the daemon on 127.0.0.1 only (ignore_ssl_verification is moot there).
    config.ignore_ssl_verification = True
    config.timeout = (5, 60)
    credentials = BasicCredentials(key["access"], key["secret"], project or key["project_id"])
    return (
        FunctionGraphClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoint(daemon.url)
        .build()
    )


@pytest.fixture
def make_key(daemon: Daemon) -> Iterator[Callable[..., dict]]:
    """`make_key(project="default")` makes an access key on the session daemon; all go at teardown
    (a project holds at most 100 keys, and the session daemon serves every test)."""
    made: list[dict] = []

    def make(project: str = "default", description: str = "test") -> dict:
        made.append(access_key(daemon, project, description))
        return made[-1]

    yield make
    for key in made:
        httpx.delete(
            f"{daemon.url}/v2/{key['project_id']}/fgs/fgd/keys/{key['access']}",
            headers={"X-Auth-Token": daemon.token},
            timeout=10,
        )


@pytest.fixture
def sdk_client(daemon: Daemon, make_key: Callable[..., dict]):
    """A stock `FunctionGraphClient` for project "default" with an access key of its own."""
    return sdk_client_for(daemon, make_key())
