"""Issue 13: the security suite's attacks, from a Node.js function.

Each must fail inside the sandbox, and the daemon must go on serving others. The Node
instance is PID 3 of its sandbox: PID 1 the reaper, PID 2 the keeper (root, which mounted
the code at specialise and holds nothing the function can reach), PID 3 node itself.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from tests.conftest import BACKGROUND_SLEEP, Api, _zombie, marker, pids_with
from tests.integration.test_nodejs import deploy_js

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="no `node` on this machine (make installs it)")

PRELUDE = """
const fs = require('fs');
const net = require('net');
const os = require('os');
const { execFileSync, spawn, spawnSync } = require('child_process');

function outcome(action) {
  try {
    return {ok: true, value: action()};
  } catch (error) {
    return {ok: false, code: error.code || error.name, errno: error.errno};
  }
}

async function settle(promise) {
  try {
    return {ok: true, value: await promise};
  } catch (error) {
    return {ok: false, code: error.code || error.name, errno: error.errno};
  }
}

// A system call made directly (node has no such binding): by the interpreter the sandbox shows,
// a child of this node, under the seccomp filter node passed on to it.
function syscall(number, args) {
  const script = 'import ctypes, os\\nlibc = ctypes.CDLL(None, use_errno=True)\\n' +
    `r = libc.syscall(ctypes.c_long(${number}), ${args})\\nprint(ctypes.get_errno() if r < 0 else 0)`;
  return Number(execFileSync('python3', ['-c', script]).toString().trim());
}
"""


@pytest.fixture(scope="module")
def canary(api: Api) -> str:
    return deploy_js(api, "exports.handler = async () => 'still serving';\n")


def assert_still_serving(api: Api, canary: str) -> None:
    response = api.invoke(canary)
    assert response.status_code == 200
    assert response.content == b"still serving"


def attack(api: Api, canary: str, body: str, **settings) -> object:
    """Run `body` (an async handler's body returning a JSON value) in a Node function; check the daemon after."""
    source = PRELUDE + "\nexports.handler = async (event, context) => {\n" + textwrap.dedent(body) + "\n};\n"
    name = deploy_js(api, source, **settings)
    response = api.invoke(name)
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "false", response.text
    assert_still_serving(api, canary)
    return response.json()


def test_cannot_read_host_files_the_daemons_state_or_its_token(api: Api, canary: str) -> None:
    state = str(api.daemon.state_dir)
    body = f"""
        return [outcome(() => fs.readFileSync('/etc/shadow', 'utf8')),
                outcome(() => fs.readdirSync({json.dumps(state)})),
                outcome(() => fs.readFileSync({json.dumps(state + "/admin.token")}, 'utf8')),
                outcome(() => fs.readdirSync('/root')),
                outcome(() => fs.readdirSync('/work'))];
    """
    for result in attack(api, canary, body):
        assert result["ok"] is False and result["code"] == "ENOENT", result


@pytest.mark.slow
def test_cannot_see_another_functions_code_or_write_outside_tmp(api: Api, canary: str) -> None:
    other = deploy_js(api, "const SECRET = 'other function ' + 'secret';\nexports.handler = async () => 1;\n")
    assert other
    body = """
        const found = [];
        const skip = ['/proc', '/sys', '/dev', '/usr'];
        (function walk(dir) {
          if (skip.includes(dir)) return;
          let entries;
          try { entries = fs.readdirSync(dir, {withFileTypes: true}); } catch (_) { return; }
          for (const entry of entries) {
            const full = (dir === '/' ? '' : dir) + '/' + entry.name;
            if (entry.isDirectory()) walk(full);
            else if (entry.isFile()) {
              try { if (fs.readFileSync(full).includes('other function ' + 'secret')) found.push(full); } catch (_) {}
            }
          }
        })('/');
        const targets = ['/opt/function/code/index.js', '/opt/function/code/new.js', '/opt/function/x', '/etc/x',
                         '/usr/x', '/x', process.execPath];
        return {found, code: fs.readdirSync('/opt/function/code'),
                denied: targets.map((t) => outcome(() => fs.writeFileSync(t, 'x'))),
                tmp: outcome(() => { fs.writeFileSync('/tmp/ok', 'x'); return fs.readFileSync('/tmp/ok', 'utf8'); })};
    """
    result = attack(api, canary, body, timeout=30)
    assert result["found"] == []
    assert result["code"] == ["index.js"]
    for denied in result["denied"]:
        assert denied["ok"] is False and denied["code"] in ("EPERM", "EACCES", "EROFS"), denied
    assert result["tmp"] == {"ok": True, "value": "x"}


def test_proc_shows_only_the_instance_and_kill_everything_reaches_only_its_own(api: Api, canary: str) -> None:
    mark = marker()
    other = api.deploy(BACKGROUND_SLEEP + "def handler(e, c):\n    return 1\n", user_data={"FGD_TEST_MARK": mark})
    assert api.invoke(other["func_name"]).status_code == 200
    assert pids_with(mark)
    body = """
        const pids = () => fs.readdirSync('/proc').filter((p) => /^[0-9]+$/.test(p)).map(Number).sort((a, b) => a - b);
        const before = pids();
        const child = spawn('sleep', ['100'], {stdio: 'ignore'});
        const died = new Promise((resolve) => child.on('exit', (code, signal) => resolve(signal)));
        const killed = outcome(() => process.kill(-1, 'SIGKILL'));
        const signal = await Promise.race([died, new Promise((r) => setTimeout(() => r('alive'), 2000))]);
        return {before, after: pids(), me: process.pid, ppid: process.ppid, killed, signal,
                keeper: outcome(() => fs.readFileSync('/proc/2/environ')),
                keeperRoot: outcome(() => fs.readdirSync('/proc/2/root'))};
    """
    result = attack(api, canary, body)
    assert result["before"] == [1, 2, 3]
    assert (result["me"], result["ppid"]) == (3, 2)
    # The signal reached what it may: its own child; not the keeper, PID 1, or anything outside.
    assert result["killed"] == {"ok": True, "value": True}
    assert result["signal"] == "SIGKILL"
    assert result["after"] == [1, 2, 3]
    assert result["keeper"]["ok"] is False and result["keeper"]["code"] == "EACCES"
    assert result["keeperRoot"]["ok"] is False and result["keeperRoot"]["code"] == "EACCES"
    assert [pid for pid in pids_with(mark) if not _zombie(pid)], "another function's process was killed"


def test_node_runs_unprivileged_under_seccomp_and_cannot_become_root(api: Api, canary: str) -> None:
    body = """
        const status = Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').split('\\n')
          .filter((l) => l.includes(':\\t')).map((l) => l.split(':\\t').map((s) => s.trim())));
        return {setuid: outcome(() => process.setuid(0)), setgid: outcome(() => process.setgid(0)),
                setgroups: outcome(() => process.setgroups([0])),
                uid: process.getuid(), gid: process.getgid(), groups: status.Groups,
                caps: ['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'].map((k) => status[k]),
                noNewPrivs: status.NoNewPrivs, seccomp: status.Seccomp,
                sockets: fs.readdirSync('/proc/self/fd').filter((fd) => {
                  try {
                    return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('socket:');
                  } catch (_) {
                    return false;
                  }
                })};
    """
    result = attack(api, canary, body)
    for call in ("setuid", "setgid", "setgroups"):
        assert result[call]["ok"] is False and result[call]["code"] == "EPERM", result[call]
    assert result["uid"] != 0 and result["gid"] != 0
    assert result["groups"] == ""  # no supplementary groups (node's getgroups() adds the gid itself)
    assert result["caps"] == ["0000000000000000"] * 5
    assert result["noNewPrivs"] == "1"
    assert result["seccomp"] == "2"
    # Only the protocol socket: the keeper's channel was closed once the code was mounted.
    assert result["sockets"] == ["3"]


@pytest.mark.parametrize(
    ("call", "number", "args", "expected"),
    [
        ("mount", "165", "b'none', b'/tmp', b'tmpfs', 0, None", 1),
        ("unshare", "272", "0x20000000", 1),
        ("setns", "308", "0, 0", 1),
        ("ptrace", "101", "16, 2, 0, 0", 1),  # PTRACE_ATTACH to the keeper
        ("bpf", "321", "0, 0, 0", 1),
        ("keyctl", "250", "0, 0, 0", 1),
        ("perf_event_open", "298", "0, 0, -1, -1, 0", 1),
        ("init_module", "175", "0, 0, b''", 1),
        ("chroot", "161", "b'/tmp'", 1),
        ("io_uring_setup", "425", "1, 0", 38),  # ENOSYS: libuv falls back to its thread pool
    ],
)
def test_dangerous_system_calls_are_refused(
    api: Api, canary: str, call: str, number: str, args: str, expected: int
) -> None:
    result = attack(
        api,
        canary,
        f"return syscall({json.dumps(number)}, {json.dumps(args)});",
    )
    assert result == expected, (call, result)


def test_network_the_daemon_is_unreachable_listening_is_refused(api: Api, canary: str) -> None:
    body = f"""
        const connect = (port) => new Promise((resolve, reject) => {{
          const socket = net.connect(port, '127.0.0.1', () => {{ socket.destroy(); resolve('connected'); }});
          socket.on('error', reject);
        }});
        const listen = () => new Promise((resolve, reject) => {{
          const server = net.createServer();
          server.on('error', reject);
          server.listen(0, '127.0.0.1', () => {{ server.close(); resolve('listening'); }});
        }});
        return {{daemon: await settle(connect({api.daemon.port})), listen: await settle(listen()),
                 interfaces: Object.keys(os.networkInterfaces())}};
    """
    result = attack(api, canary, body)
    assert result["daemon"]["ok"] is False and result["daemon"]["code"] == "ECONNREFUSED", result
    assert result["listen"]["ok"] is False and result["listen"]["code"] in ("EPERM", "EACCES"), result
    assert result["interfaces"] == ["lo"]


@pytest.mark.slow
def test_fork_bomb_stops_at_the_pids_limit(api: Api, canary: str) -> None:
    body = """
        let children = 0;
        for (let i = 0; i < 1100; i++) {
          const result = spawnSync('sh', ['-c', 'sleep 30 &'], {stdio: 'ignore'});
          if (result.error) return {children, code: result.error.code};
          if (result.status !== 0) return {children, status: result.status};
          children += 1;
        }
        return {children};
    """
    result = attack(api, canary, body, timeout=20, memory_size=1024)
    # The pids cgroup (1024 tasks, node's threads included) stops it: spawn fails, or the shell cannot fork.
    assert result.get("code") == "EAGAIN" or result.get("status") not in (None, 0), result
    assert 800 < result["children"] < 1024, result


@pytest.mark.parametrize(
    ("bytes_written", "reason"),
    [
        # A frame whose body is not msgpack.
        ("Buffer.concat([Buffer.from([0, 0, 0, 16]), Buffer.alloc(16, 0xc1)])", "protocol"),
        # A frame announcing 4 GB.
        ("Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3])", "exceeds the limit"),
        # A Result for a request it was never given.
        ("frame({type: 'Result', request_id: 'not-given', body: null, error: null, max_rss_kb: 0})", "not given"),
        # A Log line for a request it was never given.
        ("frame({type: 'Log', request_id: 'not-given', level: 'stdout', message: 'forged'})", "not given"),
        # A frame the daemon never takes from an instance.
        ("frame({type: 'Fork', instance_id: 'x'})", "unexpected Fork"),
    ],
)
def test_garbage_on_the_protocol_socket_kills_only_that_instance(
    api: Api, canary: str, bytes_written: str, reason: str
) -> None:
    source = (
        PRELUDE
        + """
const { Encoder } = require(process.env.NODE_PATH.split(':').pop() + '/../nodejs-shim-modules/@msgpack/msgpack');
function frame(value) {
  const body = new Encoder().encode(value);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, Buffer.from(body)]);
}
exports.handler = async () => {
  fs.writeSync(3, """
        + bytes_written
        + """);
  await new Promise((resolve) => setTimeout(resolve, 5000));
  return 'survived';
};
"""
    )
    name = deploy_js(api, source, timeout=10)
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "true", response.text
    body = response.json()
    assert body["errorType"] == "Runtime.ExitError", body
    assert reason in body["errorMessage"], body
    assert_still_serving(api, canary)


@pytest.mark.slow
def test_a_synchronous_log_flood_is_bounded_and_the_daemon_stays_responsive(api: Api, canary: str) -> None:
    # node cannot block on its socket: a loop that never yields buffers its Log frames in its own
    # memory (held to the function's size by its cgroup); the daemon keeps the transcript bounded.
    source = """
        exports.handler = async (event) => {
          for (let i = 0; i < event.lines; i++) console.log('flood line ' + i + ' ' + 'x'.repeat(100));
          return 'flooded';
        };
    """
    name = deploy_js(api, source, memory_size=256, timeout=20)
    response = api.invoke(name, {"lines": 100_000})
    assert response.content == b"flooded", response.text
    request_id = response.headers["x-cff-request-id"]
    answer = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id})
    assert answer.status_code == 200, answer.text
    messages = [line["message"] for line in answer.json()["logs"]]
    assert any(m.startswith("flood line ") for m in messages)
    # The transcript keeps the first 1 MB of the request's 11 MB and says what it dropped.
    assert any(" log lines (" in m and "dropped" in m for m in messages), messages[-3:]
    assert_still_serving(api, canary)
