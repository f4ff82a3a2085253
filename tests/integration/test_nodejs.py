"""Issue 13: Node.js functions, deployed with FunctionGraph's runtime strings, on a pooled node.

Every test runs a real daemon (the session's) and a real `node` in the full sandbox.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import (
    Api,
    Daemon,
    assert_tail_is_this_invocations,
    b64,
    make_zip,
    marker,
    ran_ms,
    unique_name,
    wait_none_with,
)

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="no `node` on this machine (make installs it)")

RUNTIME = "Node.js20.15"


def deploy_js(api: Api, source: str, *, files: dict | None = None, runtime: str = RUNTIME, **settings) -> str:
    """A Node.js function whose index.js is `source` (dedented); its name."""
    package = make_zip(files or {"index.js": textwrap.dedent(source)})
    response = api.create(package, runtime=runtime, **settings)
    assert response.status_code == 200, response.text
    return response.json()["func_name"]


def logs_of(api: Api, name: str, request_id: str) -> list[dict]:
    deadline = time.monotonic() + 5
    while True:
        logs = api.http.get(f"/functions/{name}/logs", params={"request_id": request_id}).json()["logs"]
        if any(line["stream"] == "platform" for line in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.05)


# Runtime names --------------------------------------------------------------------------


def test_every_functiongraph_nodejs_name_is_listed_and_served_by_the_installed_node(api: Api) -> None:
    answer = api.http.get("/runtimes").json()
    names = [f"Node.js{v}" for v in ("6.10", "8.10", "10.16", "12.13", "14.18", "16.17", "18.15", "20.15")]
    major = int(answer["served_by"]["Node.js20.15"]["version"].split(".")[0])
    assert major >= 20
    for name in names:
        assert name in answer["runtimes"]
        served = answer["served_by"][name]
        assert served["path"].endswith("node")
        # Exact for the installed major only; older names are served by the nearest newer node.
        assert served["exact"] == (int(name[7:].split(".")[0]) == major)


@pytest.mark.parametrize("runtime", ["Node.js99.1", "Node.js4.3", "Node.js20.1", "Node.js", "Node.js20.15 "])
def test_a_nodejs_name_the_node_cannot_serve_is_refused_at_create_with_the_reason(api: Api, runtime: str) -> None:
    response = api.create(make_zip({"index.js": "exports.handler = async () => 1;\n"}), runtime=runtime)
    assert response.status_code == 400, response.text
    message = response.json()["error_msg"]
    assert "runtime" in message and ("Node.js" in message or "node" in message), message


def test_an_old_name_runs_on_the_installed_node(api: Api) -> None:
    name = deploy_js(api, "exports.handler = async () => process.version;\n", runtime="Node.js8.10")
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "false", response.text
    assert response.text.startswith("v20.") or response.text[1:3].isdigit()
    summary = json.loads(response.headers["x-cff-invoke-summary"])
    assert summary["coldStart"] is True


# Handler forms --------------------------------------------------------------------------


def test_async_handler_answers_with_json(api: Api) -> None:
    name = deploy_js(api, "exports.handler = async (event, context) => ({got: event, id: context.getRequestID()});\n")
    response = api.invoke(name, {"a": 1})
    assert response.status_code == 200, response.text
    assert response.headers["x-is-func-err"] == "false", response.text
    body = response.json()
    assert body == {"got": {"a": 1}, "id": response.headers["x-cff-request-id"]}
    assert json.loads(response.headers["x-cff-invoke-summary"])["coldStart"] is True
    health = api.daemon.client().get(f"{api.daemon.url}/healthz").json()
    assert health["runtimes"]["Node.js20.15"] == health["runtimes"]["Node.js6.10"] == "ready"
    assert "Node.js20.15" in health["pool"]
    warm = api.invoke(name, {"a": 2})
    assert warm.json()["got"] == {"a": 2}
    assert json.loads(warm.headers["x-cff-invoke-summary"])["coldStart"] is False


def test_callback_handler_and_promise_handler_and_plain_return(api: Api) -> None:
    source = """
        exports.callback = function (event, context, callback) {
          setTimeout(() => callback(null, {form: 'callback', n: event.n}), 10);
        };
        exports.promise = function (event, context) {
          return new Promise((resolve) => setTimeout(() => resolve('promised ' + event.n), 10));
        };
        exports.plain = function (event, context) {
          return 'plain ' + event.n;
        };
        exports.buffer = async () => Buffer.from([0, 1, 2, 255]);
    """
    for handler, expected in [
        ("index.callback", b'{"form":"callback","n":1}'),
        ("index.promise", b"promised 1"),
        ("index.plain", b"plain 1"),
        ("index.buffer", bytes([0, 1, 2, 255])),
    ]:
        name = deploy_js(api, source, handler=handler)
        response = api.invoke(name, {"n": 1})
        assert response.headers["x-is-func-err"] == "false", (handler, response.text)
        assert response.content == expected, handler


def test_handler_in_a_subdirectory_and_a_missing_handler(api: Api) -> None:
    files = {"src/app.js": "exports.main = async () => 'from src';\n", "index.js": "exports.other = 1;\n"}
    name = deploy_js(api, "", files=files, handler="src/app.main")
    assert api.invoke(name).content == b"from src"
    missing = deploy_js(api, "", files=files, handler="index.handler")
    body = api.invoke(missing).json()
    assert body["errorType"] == "Runtime.HandlerNotFound", body
    nofile = deploy_js(api, "", files=files, handler="nothere.handler")
    body = api.invoke(nofile).json()
    assert body["errorType"] == "Runtime.ImportModuleError", body
    assert "nothere" in body["errorMessage"]


def test_es_modules_are_loaded_with_import(api: Api) -> None:
    mjs = {"index.mjs": "export const handler = async (event) => 'mjs ' + event.n;\n"}
    assert api.invoke(deploy_js(api, "", files=mjs), {"n": 1}).text == "mjs 1"
    typed = {
        "package.json": '{"type": "module"}',
        "index.js": "import os from 'os';\nexport async function handler() { return typeof os.cpus; }\n",
    }
    assert api.invoke(deploy_js(api, "", files=typed)).text == "function"


def test_a_module_that_throws_while_loading_is_an_import_error(api: Api) -> None:
    name = deploy_js(api, "throw new RangeError('broken at load');\nexports.handler = async () => 1;\n")
    body = api.invoke(name).json()
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "RangeError: broken at load" in body["errorMessage"]


# Errors ---------------------------------------------------------------------------------


def test_function_errors_carry_type_message_and_the_functions_stack_only(api: Api) -> None:
    source = """
        function inner() { throw new TypeError('bad input ' + 42); }
        exports.handler = async (event) => {
          if (event.form === 'callback') return undefined;
          inner();
        };
        exports.cb = function (event, context, callback) {
          if (event.form === 'string') callback('plain words');
          else callback(new SyntaxError('via callback'));
        };
        exports.reject = function () { return Promise.reject({code: 7}); };
    """
    response = api.invoke(deploy_js(api, source))
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == "TypeError"
    assert body["errorMessage"] == "bad input 42"
    assert any("index.js" in line and "inner" in line for line in body["stackTrace"]), body
    assert not any("instance.js" in line or "node:internal" in line for line in body["stackTrace"]), body
    body = api.invoke(deploy_js(api, source, handler="index.cb")).json()
    assert (body["errorType"], body["errorMessage"]) == ("SyntaxError", "via callback")
    body = api.invoke(deploy_js(api, source, handler="index.cb"), {"form": "string"}).json()
    assert (body["errorType"], body["errorMessage"]) == ("Error", "plain words")
    body = api.invoke(deploy_js(api, source, handler="index.reject")).json()
    assert (body["errorType"], body["errorMessage"]) == ("Error", '{"code":7}')


def test_a_result_that_is_not_json_and_one_too_large_are_refused(api: Api) -> None:
    source = """
        exports.handler = async (event) => {
          if (event.big) return 'x'.repeat(7 * 1024 * 1024);
          const loop = {}; loop.self = loop; return loop;
        };
    """
    name = deploy_js(api, source)
    assert api.invoke(name).json()["errorType"] == "Runtime.InvalidResponse"
    assert api.invoke(name, {"big": True}).json()["errorType"] == "Runtime.ResponseTooLarge"
    # The instance is still fine.
    assert api.invoke(name).json()["errorType"] == "Runtime.InvalidResponse"


# Context and environment ----------------------------------------------------------------

EVERY_GETTER = """
    exports.handler = async (event, context) => {
      const names = ['getRequestID', 'getRemainingTimeInMilliSeconds', 'getAccessKey', 'getSecretKey',
        'getSecurityAccessKey', 'getSecuritySecretKey', 'getSecurityToken', 'getToken', 'getFunctionName',
        'getRunningTimeInSeconds', 'getVersion', 'getMemorySize', 'getCPUNumber', 'getPackage',
        'getProjectID', 'getAlias'];
      const out = {};
      for (const name of names) out[name] = context[name]();
      out.getUserData = [context.getUserData('A'), context.getUserData('B', 'dflt'), context.getUserData('B') ?? null];
      const logger = context.getLogger();
      out.logger = ['debug', 'info', 'warn', 'error', 'log', 'setLevel'].filter((m) => typeof logger[m] === 'function');
      logger.info('info %s of %d', 'line', 1);
      logger.debug('not shown at the default level');
      logger.warn('warned');
      logger.error('errored');
      const env = {};
      for (const [k, v] of Object.entries(process.env)) {
        if (k.startsWith('RUNTIME_') || k === 'A' || k === 'NODE_PATH') env[k] = v;
      }
      out.env = env;
      out.cwd = process.cwd();
      return out;
    };
"""


def test_every_getter_the_logger_and_the_environment(api: Api) -> None:
    name = unique_name()
    response = api.create(
        make_zip({"index.js": textwrap.dedent(EVERY_GETTER)}),
        name=name,
        runtime=RUNTIME,
        memory_size=256,
        timeout=9,
        user_data={"A": "a"},
    )
    assert response.status_code == 200, response.text
    config = response.json()
    response = api.invoke(name)
    body = response.json()
    request_id = response.headers["x-cff-request-id"]
    assert body["getRequestID"] == request_id
    assert 0 < body["getRemainingTimeInMilliSeconds"] <= 9000
    assert body["getFunctionName"] == name
    assert body["getRunningTimeInSeconds"] == 9
    assert body["getMemorySize"] == 256
    assert body["getCPUNumber"] == config["cpu"]
    assert (body["getPackage"], body["getProjectID"], body["getVersion"]) == ("default", "default", "latest")
    assert body["getAccessKey"] == body["getSecretKey"] == body["getToken"] == ""
    assert body["getUserData"] == ["a", "dflt", None]
    assert body["logger"] == ["debug", "info", "warn", "error", "log", "setLevel"]
    env = body["env"]
    assert env["A"] == "a"
    assert env["RUNTIME_FUNC_NAME"] == name
    assert env["RUNTIME_MEMORY"] == "256"
    assert env["RUNTIME_TIMEOUT"] == "9"
    assert env["RUNTIME_HANDLER"] == "index.handler"
    assert env["RUNTIME_CODE_ROOT"] == "/opt/function/code"
    assert json.loads(env["RUNTIME_USERDATA"]) == {"A": "a"}
    assert "/opt/function/runtime/nodejs-bundled" in env["NODE_PATH"]
    assert body["cwd"] == "/opt/function"
    logged = [(line["stream"], line["message"]) for line in logs_of(api, name, request_id)]
    assert ("logger", "[INFO] info line of 1") in logged
    assert ("logger", "[WARN] warned") in logged
    assert ("logger", "[ERROR] errored") in logged
    assert not any("not shown" in message for _, message in logged)


def test_the_launch_environment_never_reaches_the_function(api: Api) -> None:
    source = """
        exports.handler = async () => ({keys: Object.keys(process.env).filter((k) => k.startsWith('FGD_')),
                                        argv: process.argv, execArgv: process.execArgv});
    """
    body = api.invoke(deploy_js(api, source)).json()
    assert body["keys"] == []
    assert not any("/work" in arg or "/root" in arg for arg in body["argv"] + body["execArgv"]), body


# Initializer ----------------------------------------------------------------------------

INITIALIZER = """
    let state = 'unset';
    exports.initializer = function (context, callback) {
      console.log('printed by the initializer');
      context.getLogger().info('initializer of ' + context.getRequestID());
      setTimeout(() => { state = 'set by ' + context.getFunctionName(); callback(null, ''); }, 10);
    };
    exports.asyncInit = async (context) => { state = 'async ' + context.getMemorySize(); };
    exports.failing = async () => { throw new Error('cannot connect'); };
    exports.failingCallback = (context, callback) => callback(new RangeError('no'));
    exports.hanging = (context, callback) => {};
    exports.handler = async () => state;
"""


def test_initializer_runs_once_before_the_first_request_with_its_logs(api: Api) -> None:
    name = deploy_js(api, INITIALIZER, initializer_handler="index.initializer", initializer_timeout=5)
    response = api.invoke(name)
    assert response.text == f"set by {name}"
    request_id = response.headers["x-cff-request-id"]
    logged = [(line["stream"], line["message"]) for line in logs_of(api, name, request_id)]
    assert ("stdout", "printed by the initializer") in logged
    assert ("logger", f"[INFO] initializer of {request_id}") in logged
    assert "Init Duration:" in next(m for s, m in logged if s == "platform")
    async_name = deploy_js(api, INITIALIZER, initializer_handler="index.asyncInit", memory_size=256)
    assert api.invoke(async_name).text == "async 256"


@pytest.mark.parametrize(
    ("initializer", "error_type", "message"),
    [
        ("index.failing", "Runtime.InitError", "Error: cannot connect"),
        ("index.failingCallback", "Runtime.InitError", "RangeError: no"),
        ("index.hanging", "Runtime.InitError", "did not finish within 1 s"),
        ("index.missing", "Runtime.HandlerNotFound", "missing"),
    ],
)
def test_initializer_failures_are_init_errors(api: Api, initializer: str, error_type: str, message: str) -> None:
    name = deploy_js(api, INITIALIZER, initializer_handler=initializer, initializer_timeout=1)
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "true"
    body = response.json()
    assert body["errorType"] == error_type, body
    assert message in body["errorMessage"], body


# Timeouts, memory, crashes --------------------------------------------------------------


def test_timeout_kills_node_and_the_child_it_spawned(api: Api) -> None:
    mark = marker()
    source = """
        const { spawn } = require('child_process');
        exports.handler = async (event) => {
          spawn('sleep', ['100'], {stdio: 'ignore'});
          spawn('sleep', ['100'], {stdio: 'ignore', detached: true});
          if (event.spin) for (;;) {}
          await new Promise(() => {});
        };
    """
    name = deploy_js(api, source, timeout=1, user_data={"FGD_TEST_MARK": mark})
    for event in ({}, {"spin": True}):
        started = time.monotonic()
        response = api.invoke(name, event)
        elapsed = time.monotonic() - started
        body = response.json()
        assert body["errorType"] == "Runtime.Timeout", body
        assert 1000 <= ran_ms(response) < 1600
        assert 1.0 <= elapsed < 4.0, elapsed  # a cold start first
        assert wait_none_with(mark)
    works = deploy_js(api, "exports.handler = async () => 'after';\n")
    assert api.invoke(works).content == b"after"


def test_memory_beyond_the_functions_size_is_out_of_memory(api: Api) -> None:
    source = """
        const kept = [];
        exports.handler = async (event) => {
          if (event.heap) { for (;;) kept.push(new Array(100000).fill(kept.length)); }
          if (event.buffers) { for (;;) kept.push(Buffer.alloc(8 << 20, 1)); }
          return 'fine';
        };
    """
    name = deploy_js(api, source, memory_size=128, timeout=20)
    for event in ({"heap": True}, {"buffers": True}):
        response = api.invoke(name, event)
        body = response.json()
        assert body["errorType"] == "Runtime.OutOfMemory", body
        assert "128 MB" in body["errorMessage"]
        used = json.loads(response.headers["x-cff-invoke-summary"])["memoryUsed"]
        assert 64 <= used <= 160, used
    again = api.invoke(name)
    assert again.content == b"fine"
    assert json.loads(again.headers["x-cff-invoke-summary"])["coldStart"] is True


def test_garbage_far_beyond_the_memory_size_is_collected_not_out_of_memory(api: Api) -> None:
    # V8's heap bound is far above the cgroup's limit: its collector must still keep a function
    # that allocates 2 GB of short-lived arrays (never more than a few MB live) inside 128 MB.
    source = """
        exports.handler = async () => {
          let total = 0;
          for (let i = 0; i < 2000; i++) total += new Array(128 * 1024).fill(i).length;
          return total;
        };
    """
    response = api.invoke(deploy_js(api, source, memory_size=128, timeout=20))
    assert response.headers["x-is-func-err"] == "false", response.text
    assert response.json() == 2000 * 128 * 1024
    assert json.loads(response.headers["x-cff-invoke-summary"])["memoryUsed"] < 128


def test_a_larger_memory_size_lets_node_use_more_than_the_pools_128_mb(api: Api) -> None:
    # The pool member starts under the generic 128 MB limit: V8 must not have sized its heap from it.
    source = """
        exports.handler = async () => {
          const kept = [];
          for (let i = 0; i < 30; i++) kept.push(new Array(1 << 20).fill(i));  // ~240 MB of heap
          return Math.floor(require('v8').getHeapStatistics().heap_size_limit / 2 ** 20);
        };
    """
    response = api.invoke(deploy_js(api, source, memory_size=512, timeout=20))
    assert response.headers["x-is-func-err"] == "false", response.text
    assert 512 <= response.json() < 640


def test_v8s_heap_is_sized_from_each_functions_memory(api: Api) -> None:
    # One Node pool per memory size: its nodes start with the heap bound of that size.
    source = "exports.handler = async () => Math.floor(require('v8').getHeapStatistics().heap_size_limit / 2 ** 20);\n"
    limits = {size: api.invoke(deploy_js(api, source, memory_size=size)).json() for size in (128, 256, 1024)}
    for size, limit in limits.items():
        assert size <= limit < size + 128, limits


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("exports.handler = async () => { process.exit(3); };", "exited with status 3"),
        (
            "exports.handler = async () => {\n"
            "  setTimeout(() => { throw new Error('late'); }, 1);\n"
            "  await new Promise(() => {});\n"
            "};",
            "exited with status 1",
        ),
        (
            "exports.handler = async () => { process.kill(process.pid, 'SIGSEGV'); await new Promise(() => {}); };",
            "SIGSEGV",
        ),
    ],
)
def test_a_crash_is_an_exit_error_and_the_next_request_starts_cold(api: Api, source: str, expected: str) -> None:
    name = deploy_js(api, source + "\nexports.ok = async () => 'ok';\n", timeout=5)
    response = api.invoke(name)
    body = response.json()
    assert body["errorType"] == "Runtime.ExitError", body
    assert expected in body["errorMessage"], body


# Concurrency and logs -------------------------------------------------------------------

CONCURRENT = """
    const INSTANCE = require('crypto').randomBytes(8).toString('hex');
    let calls = 0;
    exports.handler = async (event, context) => {
      calls += 1;
      const id = context.getRequestID();
      for (let i = 0; i < 20; i++) {
        console.log(`line ${i} of ${id}`);
        console.error(`err ${i} of ${id}`);
        context.getLogger().info(`logger ${i} of ${id}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      process.stdout.write(`partial of ${id}`);
      await new Promise((resolve) => setTimeout(resolve, event.s * 1000));
      return {instance: INSTANCE, calls};
    };
"""


def test_concurrent_requests_share_one_node_and_their_logs_stay_apart(api: Api) -> None:
    name = deploy_js(api, CONCURRENT, strategy_config={"concurrency": 1, "concurrent_num": 4}, timeout=10)
    api.invoke(name, {"s": 0})
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda _: api.daemon.client().post(f"/functions/{name}/invocations", json={"s": 0.5}), range(4))
        )
    elapsed = time.monotonic() - started
    assert all(r.headers["x-is-func-err"] == "false" for r in responses), [r.text for r in responses]
    assert len({r.json()["instance"] for r in responses}) == 1
    assert max(r.json()["calls"] for r in responses) == 5
    assert elapsed < 1.5  # together, not one after another (4 x 0.6 s)
    for response in responses:
        request_id = response.headers["x-cff-request-id"]
        logged = logs_of(api, name, request_id)
        texts = [line["message"] for line in logged if line["stream"] != "platform"]
        assert len(texts) == 61, texts
        assert all(text.endswith(request_id) for text in texts), texts
        streams = {(line["stream"], line["message"].split(" ")[0]) for line in logged}
        assert {("stdout", "line"), ("stderr", "err"), ("logger", "[INFO]"), ("stdout", "partial")} <= streams
        assert all(line["request_id"] == request_id for line in logged)


def test_tail_log_header_and_summary(api: Api) -> None:
    source = """
        const { execFileSync } = require('child_process');
        exports.handler = async (event, context) => {
          console.log('to stdout ' + event.n);
          console.warn('to stderr');
          context.getLogger().info('from logger ' + event.n);
          process.stdout.write(execFileSync('echo', ['from a child process']));
          return 'ok';
        };
    """
    name = deploy_js(api, source)
    api.invoke(name, {"n": 1})
    response = api.invoke(name, {"n": 2}, headers={"X-Cff-Log-Type": "tail"})
    assert_tail_is_this_invocations(response)
    summary = json.loads(response.headers["x-cff-invoke-summary"])
    assert summary["coldStart"] is False
    assert 5 <= summary["memoryUsed"] <= 128, summary
    assert summary["runtime_interpreter"]["path"].endswith("node"), summary
    config = api.http.get(f"/functions/{name}/config").json()
    assert config["runtime_interpreter"] == summary["runtime_interpreter"]


# Dependencies and bundled modules -------------------------------------------------------


def dependency(api: Api, files: dict) -> str:
    body = {"name": unique_name("dep"), "runtime": RUNTIME, "depend_type": "zip", "depend_file": b64(make_zip(files))}
    response = api.http.post("/dependencies/version", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_a_dependencys_node_modules_are_found_by_require_and_shadow_the_bundled_ones(api: Api) -> None:
    dep = dependency(
        api,
        {
            "node_modules/leftpad/index.js": "module.exports = (s, n) => String(s).padStart(n, '*');\n",
            "node_modules/lodash/index.js": "module.exports = {VERSION: 'from a dependency'};\n",
        },
    )
    source = """
        const leftpad = require('leftpad');
        exports.handler = async () => ({pad: leftpad('x', 3), lodash: require('lodash').VERSION,
                                        uuid: typeof require('uuid').v4, express: typeof require('express')});
    """
    body = api.invoke(deploy_js(api, source, depend_version_list=[dep])).json()
    assert body == {"pad": "**x", "lodash": "from a dependency", "uuid": "function", "express": "function"}
    # Without the dependency, the bundled lodash; the function's own node_modules wins over both.
    plain = api.invoke(deploy_js(api, "exports.handler = async () => require('lodash').VERSION;\n")).text
    assert plain.startswith("4.")
    own = {
        "index.js": "exports.handler = async () => require('lodash').VERSION;\n",
        "node_modules/lodash/index.js": "module.exports = {VERSION: 'its own'};\n",
    }
    assert api.invoke(deploy_js(api, "", files=own, depend_version_list=[dep])).text == "its own"


def test_the_bundled_modules_and_the_shim_are_read_only(api: Api) -> None:
    source = """
        const fs = require('fs');
        function attempt(path) {
          try { fs.writeFileSync(path, 'x'); return 'written'; } catch (e) { return e.code; }
        }
        exports.handler = async () => ({
          bundled: attempt('/opt/function/runtime/nodejs-bundled/lodash/index.js'),
          shim: attempt('/opt/function/runtime/nodejs-shim/instance.js'),
          code: attempt('/opt/function/code/index.js'),
          tmp: attempt('/tmp/x'),
        });
    """
    body = api.invoke(deploy_js(api, source)).json()
    assert body == {"bundled": "EROFS", "shim": "EROFS", "code": "EROFS", "tmp": "written"}


def test_what_functions_commonly_use_works_in_the_sandbox(api: Api) -> None:
    source = """
        const { Worker } = require('worker_threads');
        const { execFile, fork } = require('child_process');
        const crypto = require('crypto');
        const dgram = require('dgram');
        const dns = require('dns').promises;
        const zlib = require('zlib');
        const fsp = require('fs/promises');
        const os = require('os');

        exports.handler = async () => {
          const worker = await new Promise((resolve, reject) => {
            const w = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', {eval: true});
            w.on('message', resolve);
            w.on('error', reject);
          });
          await fsp.writeFile('/tmp/child.js', 'process.send(process.pid > 0 ? "child ok" : "no")');
          const child = await new Promise((resolve, reject) => {
            const c = fork('/tmp/child.js');
            c.on('message', resolve);
            c.on('error', reject);
          });
          const shell = await new Promise((resolve) => {
            execFile('sh', ['-c', 'echo $RUNTIME_MEMORY'], (e, out) => resolve(out.trim()));
          });
          const udp = await new Promise((resolve) => {
            const socket = dgram.createSocket('udp4');
            socket.on('message', (message) => { socket.close(); resolve(message.toString()); });
            socket.bind(0, '127.0.0.1', () => socket.send('dgram', socket.address().port, '127.0.0.1'));
          });
          return {
            worker, child, shell, udp,
            hash: crypto.createHash('sha256').update('x').digest('hex').slice(0, 8),
            zlib: zlib.gunzipSync(zlib.gzipSync('round trip')).toString(),
            localhost: (await dns.lookup('localhost')).address,
            hostname: os.hostname(),
            cpus: os.cpus().length > 0,
          };
        };
    """
    response = api.invoke(deploy_js(api, source, timeout=10))
    assert response.headers["x-is-func-err"] == "false", response.text
    assert response.json() == {
        "worker": 42,
        "child": "child ok",
        "shell": "128",
        "udp": "dgram",
        "hash": "2d711642",
        "zlib": "round trip",
        "localhost": "127.0.0.1",
        "hostname": "localhost",
        "cpus": True,
    }


@pytest.mark.slow
def test_doctor_names_the_node_and_the_names_it_serves() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fgd", "doctor"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    line = next(line for line in out.splitlines() if " node " in f" {line} ")
    assert line.startswith("ok") and "serves Node.js6.10" in line and "Node.js20.15" in line, line


def test_lone_surrogates_in_output_errors_and_results_do_not_break_the_protocol(api: Api) -> None:
    source = r"""
        exports.handler = async (event, context) => {
          console.log('half a pair: \ud800');
          context.getLogger().info('other half: \udfff');
          if (event.fail) throw new Error('broken \ud83d');
          return 'result \udc00';
        };
    """
    name = deploy_js(api, source)
    response = api.invoke(name)
    assert response.headers["x-is-func-err"] == "false", response.text
    assert response.content == "result \ufffd".encode()
    logged = [line["message"] for line in logs_of(api, name, response.headers["x-cff-request-id"])]
    assert "half a pair: \ufffd" in logged and "[INFO] other half: \ufffd" in logged
    body = api.invoke(name, {"fail": True}).json()
    assert (body["errorType"], body["errorMessage"]) == ("Error", "broken \ufffd")
    assert api.invoke(name).headers["x-is-func-err"] == "false"  # the same instance, still there


def test_bundled_modules_can_be_switched_off(tmp_path) -> None:
    daemon = Daemon(tmp_path / "state", "[runtimes]\nbundled_libraries = false\n")
    daemon.start()
    try:
        api = Api(daemon)
        source = """
            exports.handler = async () => {
              try { require('lodash'); return 'found'; } catch (e) { return e.code + ' ' + process.env.NODE_PATH; }
            };
        """
        assert api.invoke(deploy_js(api, source)).text == "MODULE_NOT_FOUND "
    finally:
        daemon.stop()


def test_agency_credentials_reach_the_getters_and_a_rotation_reaches_a_warm_instance(tmp_path) -> None:
    rotating = tmp_path / "rotating.toml"
    fields = ("access_key", "secret_key", "security_token", "auth_token")
    rotating.write_text("".join(f'{k} = "v1-{k}"\n' for k in fields))
    rotating.chmod(0o600)
    daemon = Daemon(tmp_path / "state", f'[agencies.rotating]\nfile = "{rotating}"\n')
    daemon.start()
    try:
        api = Api(daemon)
        source = """
            const INSTANCE = require('crypto').randomBytes(8).toString('hex');
            exports.handler = async (event, context) => ({
              instance: INSTANCE,
              ak: context.getAccessKey(), sk: context.getSecretKey(),
              sak: context.getSecurityAccessKey(), ssk: context.getSecuritySecretKey(),
              st: context.getSecurityToken(), token: context.getToken(),
              inEnv: Object.values(process.env).filter((v) => v.startsWith('v1-') || v.startsWith('v2-')),
            });
        """
        name = deploy_js(api, source, xrole="rotating")
        first = api.invoke(name).json()
        assert first == {
            "instance": first["instance"],
            "ak": "v1-access_key",
            "sk": "v1-secret_key",
            "sak": "v1-access_key",
            "ssk": "v1-secret_key",
            "st": "v1-security_token",
            "token": "v1-auth_token",
            "inEnv": [],
        }
        rotating.write_text("".join(f'{k} = "v2-{k}"\n' for k in fields))
        time.sleep(1.1)  # the daemon looks at the file at most once a second
        second = api.invoke(name).json()
        assert second["instance"] == first["instance"], "the same warm instance"
        assert (second["st"], second["ak"], second["token"]) == ("v2-security_token", "v2-access_key", "v2-auth_token")
    finally:
        daemon.stop()


def test_without_mounts_a_nodejs_function_fails_to_start_saying_why(tmp_path) -> None:
    config = '[sandbox]\nallow_degraded = true\ndisable = ["mounts"]\n'
    daemon = Daemon(tmp_path / "state", config)
    daemon.start()
    try:
        api = Api(daemon)
        response = api.invoke(deploy_js(api, "exports.handler = async () => 1;\n"))
        body = response.json()
        assert body["errorType"] == "Runtime.InitError", body
        assert "need the sandbox's mounts" in body["errorMessage"], body
    finally:
        daemon.stop()


def test_without_mounts_and_credentials_a_nodejs_function_runs_from_the_host_paths(tmp_path) -> None:
    # A degraded test host: no mounts and no uid change; the code is read where the daemon keeps it.
    config = '[sandbox]\nallow_degraded = true\ndisable = ["mounts", "credentials"]\n'
    daemon = Daemon(tmp_path / "state", config)
    daemon.start()
    try:
        api = Api(daemon)
        source = (
            "exports.handler = async () => [require('lodash').VERSION.split('.')[0], process.env.RUNTIME_CODE_ROOT];\n"
        )
        response = api.invoke(deploy_js(api, source))
        assert response.headers["x-is-func-err"] == "false", response.text
        major, code_root = response.json()
        assert major == "4" and code_root.startswith(str(tmp_path / "state")), response.text
    finally:
        daemon.stop()


def test_a_reserved_nodejs_instance_is_started_ahead_and_answers_warm(api: Api) -> None:
    name = deploy_js(
        api,
        "exports.initializer = async () => {};\nexports.handler = async () => 'reserved';\n",
        initializer_handler="index.initializer",
    )
    assert api.http.put(f"/functions/{name}/reservedinstances", json={"count": 1}).status_code == 200
    try:
        deadline = time.monotonic() + 10
        while True:
            response = api.invoke(name)
            assert response.text == "reserved", response.text
            if not json.loads(response.headers["x-cff-invoke-summary"])["coldStart"] or time.monotonic() > deadline:
                break
            # A request that came before the reserved instance was up started its own; retire it.
            api.http.put(f"/functions/{name}/config", json={"handler": "index.handler", "description": "again"})
            time.sleep(0.5)
        assert json.loads(response.headers["x-cff-invoke-summary"])["coldStart"] is False
    finally:
        api.http.put(f"/functions/{name}/reservedinstances", json={"count": 0})


def test_output_of_timers_a_request_left_behind_never_breaks_the_instance(api: Api) -> None:
    # The daemon remembers the last 256 finished requests; a timer started by an early request still
    # carries its id hundreds of requests later. Its output must go out as late output, not as a
    # Log frame for a request the daemon no longer knows (which it would take for a forgery).
    source = """
        const INSTANCE = require('crypto').randomBytes(8).toString('hex');
        let ticking = false;
        exports.handler = async (event, context) => {
          if (!ticking) {
            ticking = true;
            setInterval(() => { console.log('tick'); context.getLogger().info('tock'); }, 2);
          }
          return INSTANCE;
        };
    """
    name = deploy_js(api, source, timeout=5)
    client = api.daemon.client()
    instances = {client.post(f"/functions/{name}/invocations", json={}).text for _ in range(300)}
    assert len(instances) == 1, instances
    logged = [line["message"] for line in api.http.get(f"/functions/{name}/logs").json()["logs"]]
    assert "tick" in logged and "[INFO] tock" in logged
