"""What an instance is told when it becomes a function: the Specialize frame.

Built per cold start from the function's record, its code and dependency trees, the sandbox's
policy and the agency credentials it may hold; nothing here does I/O.
"""

from __future__ import annotations

import json

import msgspec

from fgd import custom
from fgd.agencies import Agencies
from fgd.bundled import SANDBOX_ROOT as BUNDLED_SANDBOX_ROOT
from fgd.codestore import CodeStore
from fgd.config import Config
from fgd.instance import Instance
from fgd.model import MAX_RESPONSE_BYTES, DependencyVersion, FunctionRecord, cpu_millicores
from fgd.sandboxing import CODE_DIR, DEPENDENCY_DIR, WORKDIR, HostSandbox
from runtimes import protocol


def function_environment(record: FunctionRecord, code_dir: str) -> dict[str, str]:
    settings = record.settings
    user_data = dict(settings.user_data)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        **user_data,
        **settings.encrypted_user_data,
        "RUNTIME_PROJECT_ID": record.project_id,
        "RUNTIME_FUNC_NAME": record.func_name,
        "RUNTIME_FUNC_VERSION": record.version,
        "RUNTIME_ALIAS": record.alias,
        "RUNTIME_PACKAGE": record.package,
        "RUNTIME_HANDLER": settings.handler,
        "RUNTIME_TIMEOUT": str(settings.timeout),
        "RUNTIME_USERDATA": json.dumps(user_data),
        "RUNTIME_CPU": str(cpu_millicores(settings.memory_size)),
        "RUNTIME_MEMORY": str(settings.memory_size),
        "RUNTIME_MAX_RESP_BODY_SIZE": str(MAX_RESPONSE_BYTES),
        "RUNTIME_INITIALIZER_HANDLER": settings.initializer_handler,
        "RUNTIME_INITIALIZER_TIMEOUT": str(settings.initializer_timeout),
        "RUNTIME_ROOT": WORKDIR if code_dir == CODE_DIR else code_dir.rsplit("/", 1)[0],
        "RUNTIME_CODE_ROOT": code_dir,
        "RUNTIME_LOG_DIR": "/tmp",
        "TMPDIR": "/tmp",
    }


def specialize_frame(record: FunctionRecord, code_dir: str) -> protocol.Specialize:
    settings = record.settings
    identity = protocol.FunctionIdentity(
        project_id=record.project_id,
        package=record.package,
        func_name=record.func_name,
        version=record.version,
        alias=record.alias,
        memory_size=settings.memory_size,
        cpu=cpu_millicores(settings.memory_size),
        timeout=settings.timeout,
        user_data={**settings.user_data, **settings.encrypted_user_data},
    )
    return protocol.Specialize(
        code_dir=code_dir,
        handler=settings.handler,
        initializer=settings.initializer_handler,
        initializer_timeout=settings.initializer_timeout,
        environ=function_environment(record, code_dir),
        identity=identity,
        concurrency=settings.strategy_config.concurrent_num,
    )


class Specializer:
    def __init__(self, config: Config, code: CodeStore, sandbox: HostSandbox | None, agencies: Agencies) -> None:
        self._config = config
        self._code = code
        self.sandbox = sandbox
        # Issue 12: credential sets of the functions' agencies, and the bundled libraries'
        # root (host path; None when switched off or not built), set by the daemon.
        self.agencies = agencies
        self.bundled_root: str | None = None

    def frame(self, record: FunctionRecord, deps: list[DependencyVersion], owner: str = "") -> protocol.Specialize:
        tree = self._code.tree_path(record.code.sha256)
        trees = [(f"{DEPENDENCY_DIR}/{d.name}/{d.version}", self._code.tree_path(d.code.sha256)) for d in deps]
        # Every other protection holds without mounts: the policy always goes (uid, seccomp...).
        # Issue 13: an http function's server listens (seccomp profile "http"); fgd.custom.
        profile = custom.seccomp_profile(record.runtime)
        policy = None if self.sandbox is None else self.sandbox.enter_policy(record, tree, trees, owner, profile)
        if self.sandbox is None or not (self.sandbox.protections.mounts and self.sandbox.protections.namespaces):
            frame = specialize_frame(record, str(tree))
            frame = msgspec.structs.replace(
                frame, dependency_dirs=[str(t) for _, t in trees], sandbox=policy, bundled_dir=self.bundled_root or ""
            )
        else:
            frame = specialize_frame(record, CODE_DIR)
            # The sandbox binds the bundled root at the same place for every instance (fgd.sandboxing).
            bundled = BUNDLED_SANDBOX_ROOT if self.bundled_root else ""
            frame = msgspec.structs.replace(
                frame, dependency_dirs=[inside for inside, _ in trees], sandbox=policy, bundled_dir=bundled
            )
        # Issue 13: what the instance becomes ("python", or the agent of a Custom/http function).
        frame = msgspec.structs.replace(frame, mode=custom.mode_of(record.runtime), region=self._config.server.region)
        return self._with_credentials(record, frame)

    # Agencies (issue 12) -----------------------------------------------------------------

    def credentials_token(self, record: FunctionRecord) -> tuple[str, int]:
        return self.agencies.credentials(record.settings.xrole, record.settings.app_xrole, record.project_id)[1]

    def _with_credentials(self, record: FunctionRecord, frame: protocol.Specialize) -> protocol.Specialize:
        """The function's agency credentials go in the frame, only to its own instances."""
        settings = record.settings
        credentials, token = self.agencies.credentials(settings.xrole, settings.app_xrole, record.project_id)
        if not token[0]:
            return frame
        identity = msgspec.structs.replace(frame.identity, credentials=credentials.as_frame())
        return msgspec.structs.replace(frame, identity=identity)

    def renewed_credentials(self, record: FunctionRecord, instance: Instance) -> dict[str, str] | None:
        """New values of the agency's credentials (its file changed) for a warm instance, else None."""
        settings = record.settings
        credentials, token = self.agencies.credentials(settings.xrole, settings.app_xrole, record.project_id)
        if token == instance.credentials_token:
            return None
        instance.credentials_token = token
        return credentials.as_frame()
