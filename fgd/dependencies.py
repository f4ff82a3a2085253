"""Dependency packages: versions numbered per name, private (uploaded) or public (shipped).

A version's zip follows the same package rules as code and is stored in the
same content-addressed store; instances get it read-only under
/opt/function/dependency/<name>/<version>, on the import path after the code.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from fgd.errors import Conflict, Forbidden, InvalidParameter, NotFound
from fgd.model import CodeRef, CreateDependency, DependencyInfo, DependencyVersion, convert
from fgd.packages import PackageRejected
from fgd.store import Store
from fgd.web.uploads import Packager, decode_inline

log = logging.getLogger("fgd.dependencies")

MAX_PER_FUNCTION = 20
PUBLIC_PROJECT = "*"
_PUBLIC_FILE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.]*?)(?:-(?P<version>\d+))?\.zip\Z")
_NAMESPACE = uuid.UUID("6f1c1f0e-6a55-4c59-9f5e-3a0f0e1d2c3b")


def _milliseconds(stamp: str) -> int:
    """A stored ISO time (`...Z` or `...+00:00`) as milliseconds since the epoch; 0 if unreadable."""
    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Dependencies:
    def __init__(self, store: Store, packager: Packager, runtimes: list[str]) -> None:
        self._store = store
        self._packager = packager
        self.packager = packager
        self._runtimes = runtimes
        self.public: dict[str, DependencyVersion] = {}

    # Lookup --------------------------------------------------------------------

    def visible(self, project_id: str) -> list[DependencyVersion]:
        own = [d for d in self._store.dependencies.values() if d.project_id == project_id]
        return sorted([*own, *self.public.values()], key=lambda d: (d.name, d.version, d.owner))

    def get_version(self, project_id: str, version_id: str) -> DependencyVersion:
        dependency = self._store.dependencies.get(version_id) or self.public.get(version_id)
        if dependency is None or dependency.project_id not in (project_id, PUBLIC_PROJECT):
            raise NotFound(f"dependency version {version_id} does not exist")
        return dependency

    def versions(self, project_id: str, dep_id: str) -> list[DependencyVersion]:
        found = [d for d in self.visible(project_id) if d.dep_id == dep_id]
        if not found:
            raise NotFound(f"dependency {dep_id} does not exist")
        return found

    def version(self, project_id: str, dep_id: str, number: int) -> DependencyVersion:
        for dependency in self.versions(project_id, dep_id):
            if dependency.version == number:
                return dependency
        raise NotFound(f"dependency {dep_id} has no version {number}")

    def resolve(self, record_project: str, runtime: str, ids: list[str]) -> list[DependencyVersion]:
        """The versions a function lists, checked: they exist, fit its runtime, and are not repeated."""
        if len(ids) > MAX_PER_FUNCTION:
            raise InvalidParameter(f"depend_version_list has {len(ids)} entries; the limit is {MAX_PER_FUNCTION}")
        if len(set(ids)) != len(ids):
            raise InvalidParameter("depend_version_list names a dependency version twice")
        found = []
        names: set[str] = set()
        for version_id in ids:
            try:
                dependency = self.get_version(record_project, version_id)
            except NotFound:
                raise InvalidParameter(f"depend_version_list: dependency version {version_id} does not exist") from None
            if dependency.runtime != runtime:
                raise InvalidParameter(
                    f"depend_version_list: {dependency.name} version {dependency.version} is for "
                    f"{dependency.runtime}, not {runtime}"
                )
            if dependency.name in names:
                raise InvalidParameter(f"depend_version_list: two versions of {dependency.name}")
            names.add(dependency.name)
            found.append(dependency)
        return found

    @staticmethod
    def info(dependency: DependencyVersion) -> DependencyInfo:
        """A version as the API answers it (FunctionGraph's Dependency)."""
        return DependencyInfo(
            id=dependency.id,
            dep_id=dependency.dep_id,
            name=dependency.name,
            version=dependency.version,
            runtime=dependency.runtime,
            description=dependency.description,
            owner=dependency.owner,
            size=dependency.size,
            etag=dependency.etag,
            file_name=f"{dependency.name}.zip",
            last_modified=_milliseconds(dependency.created),
        )

    # Changes ---------------------------------------------------------------

    def _dep_id(self, project_id: str, name: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{project_id}/{name}"))

    async def create(self, project_id: str, body: object, path: Path | None = None) -> DependencyVersion:
        """A new version of `name`: numbered one past the highest so far, from base64 or a streamed file."""
        request: CreateDependency = convert(body, CreateDependency, "the dependency")
        if request.depend_type == "obs" or request.depend_link:
            raise InvalidParameter(
                "depend_link is not supported yet: send the zip base64 in depend_file, or as a raw body"
            )
        if request.runtime not in self._runtimes:
            raise InvalidParameter(
                f"runtime {request.runtime!r} is not available on this node; available: {', '.join(self._runtimes)}"
            )
        if path is not None:
            code = await self._packager.store_file(path)
        elif request.depend_file:
            code = await self._packager.store_bytes(
                decode_inline("depend_file", request.depend_file, self._packager.code)
            )
        else:
            raise InvalidParameter("depend_file is missing: send the zip base64 in depend_file, or as a raw body")
        existing = [
            d.version for d in self._store.dependencies.values() if (d.project_id, d.name) == (project_id, request.name)
        ]
        dependency = DependencyVersion(
            id=str(uuid.uuid4()),
            dep_id=self._dep_id(project_id, request.name),
            project_id=project_id,
            name=request.name,
            version=max(existing, default=0) + 1,
            runtime=request.runtime,
            description=request.description,
            owner="private",
            size=code.size,
            etag=code.sha256,
            created=_now(),
            code=code,
        )
        await self._store.put_dependency(dependency)
        return dependency

    async def delete(self, project_id: str, dep_id: str, number: int) -> None:
        dependency = self.version(project_id, dep_id, number)
        if dependency.owner == "public":
            raise Forbidden(f"{dependency.name} is a public dependency; the node's operator manages it")
        # latest and every published version (fgd.versions): a version's dependencies are frozen with it.
        records = [*self._store.functions.values()]
        records += [v for versions in self._store.versions.values() for v in versions.values()]
        users = sorted(
            (f"{r.package}:{r.func_name}" if r.package != "default" else r.func_name)
            + (f" (version {r.version})" if r.version != "latest" else "")
            for r in records
            if dependency.id in r.settings.depend_version_list
        )
        if users:
            raise Conflict(
                f"{dependency.name} version {number} is used by {', '.join(users)}; "
                "remove it from their depend_version_list first"
            )
        await self._store.delete_dependency(dependency.id)

    async def load_public(self, directory: str | None) -> None:
        """Register the operator's dependency zips (owner public), visible to every project."""
        if not directory:
            return
        runtime = self._runtimes[0]
        for path in sorted(Path(directory).glob("*.zip")):
            match = _PUBLIC_FILE.match(path.name)
            if match is None:
                log.warning("public dependency %s: name it <name>.zip or <name>-<version>.zip", path)
                continue
            try:
                code: CodeRef = await self._packager.run(self._packager.code.put_file_copy, path)
            except PackageRejected as exc:
                log.error("public dependency %s refused: %s", path, exc.message)
                continue
            name, number = match["name"], int(match["version"] or 1)
            dependency = DependencyVersion(
                id=str(uuid.uuid5(_NAMESPACE, f"public/{name}/{number}/{code.sha256}")),
                dep_id=self._dep_id(PUBLIC_PROJECT, name),
                project_id=PUBLIC_PROJECT,
                name=name,
                version=number,
                runtime=runtime,
                description=f"public dependency from {path.name}",
                owner="public",
                size=code.size,
                etag=code.sha256,
                created=datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds"),
                code=code,
            )
            self.public[dependency.id] = dependency
        if self.public:
            log.info("public dependencies: %s", ", ".join(f"{d.name}:{d.version}" for d in self.public.values()))
