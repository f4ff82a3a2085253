"""The `fgd` command: `fgd serve` runs the daemon; the rest talk to its API."""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import sys
import zipfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fgd import events
from fgd.client import ApiError, Client, ClientError, ProgressReader, Response, quote, resolve_token

SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}
# Zips up to this size go base64 inside JSON; larger ones as a raw body, with a progress line.
INLINE_UPLOAD_MAX = 8 * 1024 * 1024
PLACEHOLDER = "def handler(event, context):\n    raise RuntimeError('code upload in progress')\n"


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Columns aligned to their widest cell; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def fail(message: str) -> int:
    print(f"fgd: error: {message}", file=sys.stderr)
    return 1


# serve ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from fgd import config as config_module
    from fgd.daemon import StartupError, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = config_module.load(args.config, listen=args.listen, state_dir=args.state_dir)
        config_module.split_host_port(config.server.listen)
    except config_module.ConfigError as exc:
        return fail(str(exc))
    try:
        trio.run(serve, config)
    except StartupError as exc:
        return fail(str(exc))
    except BaseExceptionGroup as group:
        startup = group.subgroup(StartupError)
        if startup is None:
            raise
        return fail(str(_first(startup)))
    return 0


def _first(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def cmd_openapi(args: argparse.Namespace) -> int:
    """Print the API's OpenAPI 3.1 document; generated from the code, so no daemon is needed."""
    from fgd.web.openapi import offline_document

    print(json.dumps(offline_document(), indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """One line per protection; non-zero exit if `fgd serve` would refuse to start."""
    import psutil

    from fgd import config as config_module
    from fgd.sandboxing import probe, protections_for
    from sandbox.cgroups import favors_dynamic_moves, memory_limit

    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as exc:
        return fail(str(exc))
    facts = probe(config.sandbox, check_only=True)
    for check in facts.checks:
        # User namespaces are reported, but fgd running as root does not need them; without the
        # native PID 1 (issue 15) instances run, with the Python reaper.
        status = "ok" if check.ok else ("info" if check.name in ("user namespaces", "pid 1") else "missing")
        print(f"{status:<8} {check.name:<18} {check.detail}")
    memory = psutil.virtual_memory()
    limit = memory_limit()
    allowed = f"; this cgroup allows {limit // 2**20} MB" if limit is not None else ""
    print(f"{'ok':<8} {'memory':<18} {memory.available // 2**20} MB free of {memory.total // 2**20} MB{allowed}")
    print(f"{'ok':<8} {'instance pool':<18} {config.sandbox.pool_size} pre-contained instances per runtime")
    if favors_dynamic_moves():
        print(f"{'ok':<8} {'cgroup moves':<18} favordynmods: an instance is moved into its cgroup without waiting")
    else:
        print(
            f"{'info':<8} {'cgroup moves':<18} without favordynmods, a start with the pool empty can wait "
            "10-20 ms for the kernel after a quiet spell (docs/performance.md)"
        )
    usable_runtimes = _doctor_interpreters(config)
    # Each protection that would be off, and why (a missing check above, or [sandbox] disable).
    _protections, off = protections_for(facts, config.sandbox.disable)
    for line in off:
        name, _, why = line.partition(": ")
        print(f"{'off':<8} {name:<18} {why}")
    refused = [line.partition(":")[0] for line in off]
    _doctor_network(config, namespaces="namespaces" not in refused)
    if not usable_runtimes:
        print("fgd serve would refuse to start: no Python interpreter can serve functions")
        return 1
    if refused and not config.sandbox.allow_degraded:
        print(
            f"fgd serve would refuse to start: missing {', '.join(refused)} "
            "(set [sandbox] allow_degraded = true to run without them)"
        )
        return 1
    if refused:
        print(f"fgd serve would run DEGRADED without: {', '.join(refused)}")
    else:
        print("fgd serve can start with every protection")
    return 0


if TYPE_CHECKING:
    from fgd.config import Config


def _doctor_network(config: Config, *, namespaces: bool) -> None:
    """Issue 14: whether functions can have `outbound` here, and why not (nothing is created)."""
    import os

    from fgd.network import availability

    network = config.network
    ok, detail = availability(network, root=os.geteuid() == 0, namespaces=namespaces)
    if ok:
        detail = (
            f"outbound: NAT from {network.subnet} through bridge {network.bridge}, "
            f"default mode of new functions {network.default_mode}"
        )
    # Not a protection: without it functions have loopback only, the safer side ("info", not "off").
    print(f"{'ok' if ok else 'info':<8} {'network':<18} {detail}")


def _doctor_interpreters(config: Config) -> bool:
    """One line per Python interpreter found (issue 12): what it serves, or why it does not."""
    from fgd.interpreters import Catalogue, discover

    catalogue = Catalogue(discover(config.runtimes), config.runtimes.exact_versions)
    for interpreter in catalogue.describe_interpreters():
        label = f"python {interpreter['version']}"
        if interpreter["serves"]:
            print(f"{'ok':<8} {label:<18} {interpreter['path']} serves {', '.join(interpreter['serves'])}")
        else:
            print(f"{'info':<8} {label:<18} {interpreter['path']} not used: {interpreter['reason']}")
    # Issue 13 (nodejs): the node serving the Node.js names, or why none does (not needed to start).
    from fgd.nodejs import NodeCatalogue, find_node, shim_built

    nodejs = NodeCatalogue(find_node(), config.runtimes.exact_versions, built=shim_built())
    if nodejs.node is not None:
        label = f"node {nodejs.node.version}"
        print(f"{'ok':<8} {label:<18} {nodejs.node.path} serves {', '.join(nodejs.names())}")
    else:
        print(f"{'info':<8} {'node':<18} {nodejs.refusal('Node.js20.15')}")
    return bool(catalogue.python_names())


# client commands ----------------------------------------------------------


def client_of(args: argparse.Namespace) -> Client:
    return Client(args.endpoint, resolve_token(args.token, args.state_dir), args.project)


def zip_directory(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                full = Path(root) / name
                archive.write(full, full.relative_to(path).as_posix())
    return buffer.getvalue()


def read_package(source: str) -> bytes:
    path = Path(source)
    if path.is_dir():
        return zip_directory(path)
    if path.is_file():
        data = path.read_bytes()
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise ClientError(f"{source} is not a zip file or a directory")
        return data
    raise ClientError(f"{source}: no such file or directory")


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"--env {pair!r} must be KEY=VALUE")
        env[key] = value
    return env


def upload_raw(client: Client, path: str, data: bytes, label: str) -> dict:
    body = ProgressReader(data, label, sys.stderr)
    response = client.request(
        "PUT" if "/functions/" in path else "POST",
        path,
        body,  # type: ignore[arg-type]
        headers={"Content-Type": "application/zip", "Content-Length": str(len(data))},
    )
    assert isinstance(response, Response)
    return response.json()


def resolve_dependencies(client: Client, specs: Sequence[str]) -> list[str]:
    """NAME or NAME:VERSION (default: the newest) to dependency version ids."""
    ids = []
    for spec in specs:
        name, _, version = spec.partition(":")
        versions = client.json("GET", f"/dependencies?name={quote(name)}")["dependencies"]
        if version:
            if not version.isdigit():
                raise ClientError(f"--dep {spec!r}: the version must be a number")
            versions = [v for v in versions if v["version"] == int(version)]
        if not versions:
            raise ClientError(f"--dep {spec!r}: no such dependency (see `fgd dep ls`)")
        ids.append(max(versions, key=lambda v: v["version"])["id"])
    return ids


def cmd_deploy(args: argparse.Namespace) -> int:
    client = client_of(args)
    package = read_package(args.source)
    large = len(package) > INLINE_UPLOAD_MAX
    code = base64.b64encode(package).decode() if not large else ""
    settings: dict = {"handler": args.handler}
    if args.dep:
        settings["depend_version_list"] = resolve_dependencies(client, args.dep)
    if args.memory is not None:
        settings["memory_size"] = args.memory
    if args.timeout is not None:
        settings["timeout"] = args.timeout
    if args.env:
        settings["user_data"] = parse_env(args.env)
    if args.initializer:
        settings["initializer_handler"] = args.initializer
    name = f"{args.package}:{args.name}"
    try:
        existing = client.json("GET", f"/functions/{quote(name)}/config")
    except ClientError as exc:
        if getattr(exc, "status", None) != 404:
            raise
        existing = None
    if existing is None:
        if not args.runtime:
            raise ClientError("--runtime is required to create a function (see GET /runtimes)")
        # A large package cannot go inside the JSON: create with a placeholder, then stream the zip.
        body = {
            "func_name": args.name,
            "package": args.package,
            "runtime": args.runtime,
            "code_type": "inline" if large else "zip",
            "func_code": {"file": base64.b64encode(PLACEHOLDER.encode()).decode() if large else code},
            **settings,
        }
        config = client.json("POST", "/functions", body)
        if large:
            config = upload_raw(client, f"/functions/{quote(name)}/code", package, f"uploading {args.source}")
        verb = "created"
    else:
        if args.runtime and args.runtime != existing["runtime"]:
            raise ClientError(
                f"{args.name} exists with runtime {existing['runtime']}; the runtime cannot change (fgd rm it first)"
            )
        if large:
            upload_raw(client, f"/functions/{quote(name)}/code", package, f"uploading {args.source}")
        else:
            client.json("PUT", f"/functions/{quote(name)}/code", {"code_type": "zip", "func_code": {"file": code}})
        config = client.json("PUT", f"/functions/{quote(name)}/config", settings)
        verb = "updated"
    print(f"{verb} {config['func_urn']}")
    print(
        f"  runtime {config['runtime']}, handler {config['handler']}, memory {config['memory_size']} MB, "
        f"timeout {config['timeout']} s, code {config['code_size']} bytes"
    )
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    client = client_of(args)
    data = args.data
    if data == "@-":
        # `fgd event apig | fgd invoke NAME --data @-`
        data = sys.stdin.read()
    elif data.startswith("@"):
        try:
            data = Path(data[1:]).read_text()
        except OSError as exc:
            raise ClientError(f"cannot read {data[1:]}: {exc.strerror}") from None
    try:
        json.loads(data)
    except ValueError as exc:
        raise ClientError(f"--data is not valid JSON: {exc}") from None
    if args.async_:
        answer = client.json("POST", f"/functions/{quote(args.name)}/invocations-async", json.loads(data))
        print(f"queued {answer['request_id']} (follow it with: fgd async ls {args.name})")
        return 0
    headers = {"X-Cff-Log-Type": "tail"} if args.log else {}
    response = client.request("POST", f"/functions/{quote(args.name)}/invocations", data.encode(), headers)
    assert isinstance(response, Response)
    if args.log and response.headers.get("x-cff-function-log"):
        sys.stderr.write(base64.b64decode(response.headers["x-cff-function-log"]).decode(errors="replace"))
    sys.stdout.write(response.body.decode(errors="replace") + "\n")
    if args.verbose:
        print(
            f"request {response.headers.get('x-cff-request-id')}: {response.headers.get('x-cff-invoke-summary')}",
            file=sys.stderr,
        )
    if response.headers.get("x-is-func-err") == "true":
        print(f"fgd: the function failed ({response.headers.get('x-func-err-code')})", file=sys.stderr)
        return 2
    return 0


def cmd_event(args: argparse.Namespace) -> int:
    """Print a FunctionGraph-shaped test event (fgd.events) on stdout."""
    print(json.dumps(events.event(args.name, region=args.region, project=args.project), indent=2))
    return 0


def cmd_async_ls(args: argparse.Namespace) -> int:
    client = client_of(args)
    query = f"?limit={args.limit}" + (f"&status={quote(args.status)}" if args.status else "")
    rows = client.json("GET", f"/functions/{quote(args.name)}/async-invocations{query}")["invocations"]
    if not rows:
        print(f"no asynchronous invocations of {args.name}")
        return 0
    table = [("REQUEST ID", "STATUS", "ATTEMPTS", "STARTED", "ENDED", "ERROR")]
    for r in rows:
        # error_code is FunctionGraph's number; error_type names the error (FSS code or exception).
        error = f"{r['error_type']}: {r['error_message']}" if r["error_code"] else ""
        started, ended = r["start_time"] or "", r["end_time"] or ""
        table.append((r["request_id"], r["status"], str(r["attempts"]), started, ended, error))
    print_table(table)
    return 0


def cmd_trigger_add(args: argparse.Namespace) -> int:
    client = client_of(args)
    if bool(args.timer) == bool(args.http):
        raise ClientError("give exactly one of --timer SCHEDULE or --http PATH")
    if args.timer:
        kind = "TIMER"
        data = {
            "name": args.trigger_name or "timer",
            "schedule_type": "Rate" if args.rate else "Cron",
            "schedule": args.timer,
            "user_event": args.user_event,
        }
    else:
        kind = "APIG"
        data = {
            "name": args.trigger_name or "http",
            "path": args.http,
            "req_method": args.method,
            "auth": args.auth,
            "match_mode": args.match,
        }
    body = {"trigger_type_code": kind, "trigger_status": "ACTIVE", "event_data": data}
    trigger = client.json("POST", f"/triggers/{quote(args.name)}", body)
    print(f"added {kind} trigger {trigger['trigger_id']} to {args.name}")
    return 0


def cmd_trigger_ls(args: argparse.Namespace) -> int:
    client = client_of(args)
    rows = client.json("GET", f"/triggers/{quote(args.name)}")
    if not rows:
        print(f"{args.name} has no triggers")
        return 0
    table = [("ID", "TYPE", "STATUS", "NAME", "WHAT")]
    for t in rows:
        data = t["event_data"]
        what = (
            f"{data['schedule_type']} {data['schedule']}"
            if t["trigger_type_code"] == "TIMER"
            else f"{data['req_method']} {data['path']} ({data['match_mode']}, auth {data['auth']})"
        )
        table.append((t["trigger_id"], t["trigger_type_code"], t["trigger_status"], data["name"], what))
    print_table(table)
    return 0


def cmd_trigger_rm(args: argparse.Namespace) -> int:
    client = client_of(args)
    for trigger in client.json("GET", f"/triggers/{quote(args.name)}"):
        if trigger["trigger_id"] == args.trigger_id:
            client.request("DELETE", f"/triggers/{quote(args.name)}/{trigger['trigger_type_code']}/{args.trigger_id}")
            print(f"deleted trigger {args.trigger_id}")
            return 0
    raise ClientError(f"{args.name} has no trigger {args.trigger_id} (see `fgd trigger ls {args.name}`)")


def cmd_ls(args: argparse.Namespace) -> int:
    client = client_of(args)
    rows = []
    marker = 0
    while True:
        page = client.json("GET", f"/functions?marker={marker}&maxitems=400")
        rows += page["functions"]
        marker = page["next_marker"]
        if not marker:
            break
    if not rows:
        print("no functions; deploy one with: fgd deploy DIR --name NAME --runtime RUNTIME --handler index.handler")
        return 0
    table = [("NAME", "RUNTIME", "MEMORY", "TIMEOUT", "HANDLER", "MODIFIED")]
    for f in rows:
        name = f["func_name"] if f["package"] == "default" else f"{f['package']}:{f['func_name']}"
        table.append(
            (name, f["runtime"], f"{f['memory_size']} MB", f"{f['timeout']} s", f["handler"], f["last_modified"])
        )
    print_table(table)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    client = client_of(args)
    body = {k: v for k, v in (("version", args.version), ("description", args.description)) if v}
    version = client.json("POST", f"/functions/{quote(args.name)}/versions", body)
    print(f"published {args.name}:{version['version']} (digest {version['digest'][:16]}...)")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    client = client_of(args)
    rows = client.json("GET", f"/functions/{quote(args.name)}/versions?maxitems=400")["versions"]
    table = [("VERSION", "MEMORY", "TIMEOUT", "CODE SIZE", "PUBLISHED", "DESCRIPTION")]
    for v in rows:
        described = v.get("version_description", "") if v["version"] != "latest" else "(current code and config)"
        table.append(
            (
                v["version"],
                f"{v['memory_size']} MB",
                f"{v['timeout']} s",
                str(v["code_size"]),
                v["last_modified"],
                described,
            )
        )
    print_table(table)
    return 0


def parse_weights(pairs: Sequence[str]) -> dict[str, int]:
    weights = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        if not sep or not version or not weight.isdigit():
            raise ClientError(f"--weight {pair!r} must be VERSION=PERCENT (an integer 0-100)")
        weights[version] = int(weight)
    return weights


def cmd_alias_set(args: argparse.Namespace) -> int:
    """Create the alias, or point an existing one elsewhere."""
    client = client_of(args)
    body = {
        "version": args.version,
        "description": args.description,
        "additional_version_weights": parse_weights(args.weight),
    }
    path = f"/functions/{quote(args.name)}/aliases"
    try:
        client.json("GET", f"{path}/{quote(args.alias)}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        client.json("POST", path, {"name": args.alias, **body})
        print(f"alias {args.name}:!{args.alias} -> {args.version}")
        return 0
    client.json("PUT", f"{path}/{quote(args.alias)}", body)
    print(f"alias {args.name}:!{args.alias} -> {args.version} (moved)")
    return 0


def cmd_alias_ls(args: argparse.Namespace) -> int:
    client = client_of(args)
    rows = client.json("GET", f"/functions/{quote(args.name)}/aliases")
    if not rows:
        print(f"{args.name} has no aliases")
        return 0
    table = [("ALIAS", "VERSION", "ADDITIONAL", "DESCRIPTION")]
    for a in rows:
        extra = ", ".join(f"{v} {w}%" for v, w in a["additional_version_weights"].items())
        extra = extra or ", ".join(f"{v} by header" for v in a["additional_version_strategy"])
        table.append((a["name"], a["version"], extra, a["description"]))
    print_table(table)
    return 0


def cmd_alias_rm(args: argparse.Namespace) -> int:
    client = client_of(args)
    client.request("DELETE", f"/functions/{quote(args.name)}/aliases/{quote(args.alias)}")
    print(f"deleted alias {args.name}:!{args.alias}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    client = client_of(args)
    client.request("DELETE", f"/functions/{quote(args.name)}")
    print(f"deleted {args.name}")
    return 0


# C0 and C1 controls but tab, and DEL: a function's text must not drive the operator's terminal
# (escape sequences, OSC 52 clipboard writes) nor start a line of its own that looks like ours.
TERMINAL_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0))}


def format_log(line: dict) -> str:
    stamp = datetime.fromtimestamp(line["time"]).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    request = line["request_id"] or "-"
    return f"{stamp} {request} {line['stream']:<8} {line['message'].translate(TERMINAL_CONTROLS)}"


def cmd_logs(args: argparse.Namespace) -> int:
    client = client_of(args)
    query = f"?limit={args.limit}"
    if args.request_id:
        query += f"&request_id={quote(args.request_id)}"
    path = f"/functions/{quote(args.name)}/logs{query}"
    if args.follow:
        for raw in client.request("GET", path + "&follow=true", stream=True):
            if raw.strip():
                print(format_log(json.loads(raw)), flush=True)
        return 0
    for line in client.json("GET", path)["logs"]:
        print(format_log(line))
    return 0


def cmd_dep_add(args: argparse.Namespace) -> int:
    client = client_of(args)
    package = read_package(args.zip)
    if len(package) > INLINE_UPLOAD_MAX:
        query = f"?name={quote(args.name)}&runtime={quote(args.runtime)}&description={quote(args.description)}"
        dependency = upload_raw(client, f"/dependencies/version{query}", package, f"uploading {args.zip}")
    else:
        dependency = client.json(
            "POST",
            "/dependencies/version",
            {
                "name": args.name,
                "runtime": args.runtime,
                "description": args.description,
                "depend_type": "zip",
                "depend_file": base64.b64encode(package).decode(),
            },
        )
    print(
        f"added {dependency['name']} version {dependency['version']} ({dependency['size']} bytes), "
        f"id {dependency['id']}"
    )
    return 0


def cmd_dep_ls(args: argparse.Namespace) -> int:
    client = client_of(args)
    rows = client.json("GET", "/dependencies")["dependencies"]
    if not rows:
        print("no dependencies; add one with: fgd dep add NAME ZIP --runtime RUNTIME")
        return 0
    table = [("NAME", "VERSION", "RUNTIME", "OWNER", "SIZE", "ID")]
    table += [(d["name"], str(d["version"]), d["runtime"], d["owner"], str(d["size"]), d["id"]) for d in rows]
    print_table(table)
    return 0


def cmd_dep_rm(args: argparse.Namespace) -> int:
    client = client_of(args)
    name, _, version = args.spec.partition(":")
    versions = client.json("GET", f"/dependencies?name={quote(name)}")["dependencies"]
    targets = [v for v in versions if not version or str(v["version"]) == version]
    if not targets:
        raise ClientError(f"no dependency {args.spec!r} (see `fgd dep ls`)")
    for dependency in targets:
        client.request("DELETE", f"/dependencies/{dependency['dep_id']}/version/{dependency['version']}")
        print(f"deleted {dependency['name']} version {dependency['version']}")
    return 0


# access keys -------------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    client = client_of(args)
    key = client.json("POST", "/fgd/keys", {"description": args.description})
    # The only time the secret is shown: print it as JSON a script can keep.
    print(json.dumps({"access": key["access"], "secret": key["secret"], "project_id": key["project_id"]}))
    return 0


def cmd_keys_ls(args: argparse.Namespace) -> int:
    client = client_of(args)
    rows = client.json("GET", "/fgd/keys")["keys"]
    if not rows:
        print(f"project {args.project} has no access keys; make one with: fgd keys create --project {args.project}")
        return 0
    table = [("ACCESS KEY", "PROJECT", "CREATED", "LAST USED", "DESCRIPTION")]
    for k in rows:
        description = k["description"].translate(TERMINAL_CONTROLS)
        table.append((k["access"], k["project_id"], k["created"], k["last_used"] or "never", description))
    print_table(table)
    return 0


def cmd_keys_rm(args: argparse.Namespace) -> int:
    client = client_of(args)
    client.request("DELETE", f"/fgd/keys/{quote(args.access)}")
    print(f"removed access key {args.access}; requests signed with it are refused from now on")
    return 0


# parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fgd", description="A single-node serverless function runtime.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--listen", help="HOST:PORT for the API (default 127.0.0.1:8900)")
    serve.add_argument("--state-dir", help="state directory (default /var/lib/fgd)")
    serve.add_argument("--config", help="TOML config file; every option has a default")
    serve.set_defaults(func=cmd_serve)

    doctor = sub.add_parser("doctor", help="check what this host offers the sandbox")
    doctor.add_argument("--config", help="TOML config file")
    doctor.set_defaults(func=cmd_doctor)

    openapi = sub.add_parser("openapi", help="print the API's OpenAPI 3.1 document (JSON)")
    openapi.set_defaults(func=cmd_openapi)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoint", help="API endpoint (default $FGD_ENDPOINT or http://127.0.0.1:8900)")
    common.add_argument("--token", help="admin token (default $FGD_TOKEN or <state-dir>/admin.token)")
    common.add_argument("--state-dir", help="where to find admin.token (default $FGD_STATE_DIR or /var/lib/fgd)")
    common.add_argument("--project", default="default", help="project id (default: default)")

    deploy = sub.add_parser("deploy", parents=[common], help="create or update a function from a directory or zip")
    deploy.add_argument("source", help="directory or zip with the function's code")
    deploy.add_argument("--name", required=True)
    deploy.add_argument("--package", default="default")
    deploy.add_argument("--runtime", help="e.g. Python3.11 (required when creating)")
    deploy.add_argument("--handler", default="index.handler")
    deploy.add_argument("--initializer", help="initializer handler, e.g. index.init")
    deploy.add_argument("--memory", type=int, help="memory size in MB (64-10240)")
    deploy.add_argument("--timeout", type=int, help="timeout in seconds")
    deploy.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable (repeatable)")
    deploy.add_argument(
        "--dep", action="append", default=[], metavar="NAME[:VERSION]", help="dependency to attach (repeatable)"
    )
    deploy.set_defaults(func=cmd_deploy)

    dep = sub.add_parser("dep", help="dependency packages").add_subparsers(dest="dep_command", required=True)
    dep_add = dep.add_parser("add", parents=[common], help="upload a new version of a dependency")
    dep_add.add_argument("name")
    dep_add.add_argument("zip", help="zip (or directory) with the dependency's files at its root")
    dep_add.add_argument("--runtime", required=True)
    dep_add.add_argument("--description", default="")
    dep_add.set_defaults(func=cmd_dep_add)
    dep_ls = dep.add_parser("ls", parents=[common], help="list dependency versions")
    dep_ls.set_defaults(func=cmd_dep_ls)
    dep_rm = dep.add_parser("rm", parents=[common], help="delete a dependency version (NAME:VERSION) or all of NAME")
    dep_rm.add_argument("spec", metavar="NAME[:VERSION]")
    dep_rm.set_defaults(func=cmd_dep_rm)

    invoke = sub.add_parser("invoke", parents=[common], help="invoke a function synchronously")
    invoke.add_argument("name", help="NAME, or NAME:VERSION / NAME:!ALIAS")
    invoke.add_argument("--data", default="{}", help="event as JSON, @file, or @- for standard input")
    invoke.add_argument("--log", action="store_true", help="print the invocation's log tail on stderr")
    invoke.add_argument("-v", "--verbose", action="store_true", help="print the request id and summary")
    invoke.add_argument("--async", dest="async_", action="store_true", help="queue it and print the request id")
    invoke.set_defaults(func=cmd_invoke)

    event = sub.add_parser("event", help="print a FunctionGraph test event: fgd event apig | fgd invoke NAME --data @-")
    event.add_argument("name", choices=sorted(events.TEMPLATES), help="the trigger whose event to print")
    event.add_argument("--region", default="local", help="region in URNs and records (default: local)")
    event.add_argument("--project", default="default", help="project id in URNs and records (default: default)")
    event.set_defaults(func=cmd_event)
    publish = sub.add_parser("publish", parents=[common], help="publish latest as a new frozen version")
    publish.add_argument("name")
    publish.add_argument("--version", help="its name (default vYYYYMMDD-HHMMSS)")
    publish.add_argument("--description", default="")
    publish.set_defaults(func=cmd_publish)

    versions = sub.add_parser("versions", parents=[common], help="list a function's versions")
    versions.add_argument("name")
    versions.set_defaults(func=cmd_versions)

    alias = sub.add_parser("alias", help="aliases: names that point at a version").add_subparsers(
        dest="alias_command", required=True
    )
    alias_set = alias.add_parser("set", parents=[common], help="create an alias or point it at another version")
    alias_set.add_argument("name")
    alias_set.add_argument("alias")
    alias_set.add_argument("version")
    alias_set.add_argument(
        "--weight", action="append", default=[], metavar="VERSION=PERCENT", help="send a share to another version"
    )
    alias_set.add_argument("--description", default="")
    alias_set.set_defaults(func=cmd_alias_set)
    alias_ls = alias.add_parser("ls", parents=[common], help="list a function's aliases")
    alias_ls.add_argument("name")
    alias_ls.set_defaults(func=cmd_alias_ls)
    alias_rm = alias.add_parser("rm", parents=[common], help="delete an alias")
    alias_rm.add_argument("name")
    alias_rm.add_argument("alias")
    alias_rm.set_defaults(func=cmd_alias_rm)

    async_ = sub.add_parser("async", help="asynchronous invocations").add_subparsers(
        dest="async_command", required=True
    )
    async_ls = async_.add_parser("ls", parents=[common], help="status of a function's asynchronous invocations")
    async_ls.add_argument("name")
    async_ls.add_argument("--status", choices=["WAIT", "RUNNING", "SUCCESS", "FAIL", "DISCARD"])
    async_ls.add_argument("--limit", type=int, default=20)
    async_ls.set_defaults(func=cmd_async_ls)

    trigger = sub.add_parser("trigger", help="timer and HTTP triggers").add_subparsers(
        dest="trigger_command", required=True
    )
    trigger_add = trigger.add_parser("add", parents=[common], help="add a TIMER (--timer) or APIG (--http) trigger")
    trigger_add.add_argument("name", help="function")
    trigger_add.add_argument("--timer", metavar="SCHEDULE", help="cron (6 fields, seconds first), @every 1m, ...")
    trigger_add.add_argument("--rate", action="store_true", help="SCHEDULE is a rate: 3m, 1h, 2d")
    trigger_add.add_argument("--user-event", default="", help="passed to the function as user_event")
    trigger_add.add_argument("--http", metavar="PATH", help="route on the gateway listener, e.g. /hello")
    trigger_add.add_argument("--method", default="ANY")
    trigger_add.add_argument("--auth", choices=["NONE", "TOKEN"], default="NONE")
    trigger_add.add_argument("--match", choices=["SWA", "NORMAL"], default="SWA", help="prefix (SWA) or exact")
    trigger_add.add_argument("--trigger-name", help="the trigger's name")
    trigger_add.set_defaults(func=cmd_trigger_add)
    trigger_ls = trigger.add_parser("ls", parents=[common], help="list a function's triggers")
    trigger_ls.add_argument("name")
    trigger_ls.set_defaults(func=cmd_trigger_ls)
    trigger_rm = trigger.add_parser("rm", parents=[common], help="delete a trigger")
    trigger_rm.add_argument("name")
    trigger_rm.add_argument("trigger_id")
    trigger_rm.set_defaults(func=cmd_trigger_rm)

    keys = sub.add_parser("keys", help="access keys (AK/SK) for Huawei Cloud's SDKs").add_subparsers(
        dest="keys_command", required=True
    )
    keys_create = keys.add_parser(
        "create", parents=[common], help="make an access key for --project; prints its secret, once"
    )
    keys_create.add_argument("--description", default="", help="what the key is for (at most 255 characters)")
    keys_create.set_defaults(func=cmd_keys_create)
    keys_ls = keys.add_parser("ls", parents=[common], help="list the access keys of --project (never their secrets)")
    keys_ls.set_defaults(func=cmd_keys_ls)
    keys_rm = keys.add_parser("rm", parents=[common], help="remove an access key of --project")
    keys_rm.add_argument("access", metavar="ACCESS")
    keys_rm.set_defaults(func=cmd_keys_rm)

    ls = sub.add_parser("ls", parents=[common], help="list functions")
    ls.set_defaults(func=cmd_ls)

    rm = sub.add_parser("rm", parents=[common], help="delete a function")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_rm)

    logs = sub.add_parser("logs", parents=[common], help="show a function's logs")
    logs.add_argument("name")
    logs.add_argument("--request-id")
    logs.add_argument("--limit", type=int, default=100)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=cmd_logs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ClientError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())
