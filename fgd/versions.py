"""Versions and aliases: publish frozen copies of a function, and route through aliases.

A published version is a FunctionRecord frozen at publish time (code reference, runtime,
dependencies, every setting) under its own name; `latest` is the function's live record.
Only scaling settings (reserved instances, max instances, async invoke config) may still be
set on a version or an alias, as on FunctionGraph. An alias names a main version and at most
one additional version, which takes a share of the requests (weights, random per request) or
the requests whose headers match its rules.

Qualifiers are resolved once per request, here: `lookup` turns a URN's qualifier into the
record it names (an alias: its main version, seen through the alias), `route` picks the
version an invocation through an alias runs. Every invocation path (sync, async, timers,
gateway routes, destinations) calls both.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import trio

from fgd.errors import (
    AdditionalVersionInUse,
    AliasExists,
    AliasHasTriggers,
    AliasNotFound,
    InvalidParameter,
    NotFound,
    NothingToPublish,
    SameVersions,
    VersionExists,
    VersionNotFound,
)
from fgd.model import (
    MAX_ALIASES,
    MAX_VERSIONS,
    VERSION_NAME_RE,
    AliasAnswer,
    AliasRecord,
    CreateAlias,
    FunctionRecord,
    FunctionRef,
    PublishVersion,
    UpdateAlias,
    VersionStrategy,
    check_qualifier,
    convert,
    function_urn,
    timestamp,
)
from fgd.store import Store

Key = tuple[str, str, str]
# How an invocation path reads a request header (lower-case name); None: it has no headers.
HeaderGetter = Callable[[str], str | None]


def _name(key: Key) -> str:
    return f"{key[1]}:{key[2]}"


def fingerprint(record: FunctionRecord) -> str:
    """What publishing freezes: code, runtime and configuration, not scaling or timestamps."""
    frozen = (
        record.runtime,
        record.code,
        record.code_type,
        record.code_filename,
        record.code_url,
        record.code_link,
        record.settings,
    )
    return hashlib.sha256(msgspec.json.encode(frozen)).hexdigest()


def alias_view(version: FunctionRecord, alias: AliasRecord) -> FunctionRecord:
    """`version` as requests through `alias` see it: its instances are the alias's own, and the
    alias's scaling settings apply (reserved instances only to its main version)."""
    main = version.version == alias.version
    return msgspec.structs.replace(
        version,
        alias=alias.name,
        reserved=alias.reserved if main else 0,
        reserved_idle_mode=alias.reserved_idle_mode if main else False,
        max_instances=alias.max_instances if alias.max_instances is not None else version.max_instances,
        async_config=alias.async_config if alias.async_modified else version.async_config,
        async_created=alias.async_created if alias.async_modified else version.async_created,
        async_modified=alias.async_modified or version.async_modified,
    )


def lookup(store: Store, ref: FunctionRef) -> FunctionRecord:
    """The record a qualified name denotes: latest, a version, or an alias's main version."""
    key, qualifier = ref.key, ref.qualifier
    record = store.get(key)
    if record is None and ref.ambiguous:
        # `a:b` with no function a/b: the function a (package default), qualifier b.
        key, qualifier = (ref.project_id, "default", ref.package), ref.func_name
        record = store.get(key)
        if record is not None:
            check_qualifier(f"{ref.package}:{ref.func_name}", qualifier)
        if record is None:
            raise NotFound(
                f"neither function {ref.package}:{ref.func_name} nor function {ref.package} "
                f"(with qualifier {ref.func_name!r}) exists in project {ref.project_id}"
            )
    if record is None:
        raise NotFound(f"function {ref.package}:{ref.func_name} does not exist in project {ref.project_id}")
    if qualifier == "latest":
        return record
    if qualifier.startswith("!"):
        return _alias_target(store, key, qualifier[1:])
    version = store.versions.get(key, {}).get(qualifier)
    if version is not None:
        return version
    # A bare qualifier may name an alias too (FunctionGraph accepts both forms).
    if qualifier in store.aliases.get(key, {}):
        return _alias_target(store, key, qualifier)
    raise VersionNotFound(f"function {_name(key)} has no version or alias {qualifier!r}")


def _alias_target(store: Store, key: Key, name: str) -> FunctionRecord:
    alias = store.aliases.get(key, {}).get(name)
    if alias is None:
        raise AliasNotFound(f"function {_name(key)} has no alias {name!r}")
    version = store.version(key, alias.version)
    if version is None:
        raise VersionNotFound(f"alias {name!r} of {_name(key)} points at version {alias.version!r}, which is gone")
    return alias_view(version, alias)


def rules_match(strategy: VersionStrategy, header: HeaderGetter) -> bool:
    """Whether a request's headers satisfy an additional version's rules (names case-insensitive;
    `in` takes comma-separated values)."""
    results = []
    for rule in strategy.rules:
        value = header(rule.param.lower())
        if value is None:
            results.append(False)
        elif rule.op == "=":
            results.append(value.strip() == rule.value)
        else:
            results.append(value.strip() in {v.strip() for v in rule.value.split(",")})
    return all(results) if strategy.combine_type == "and" else any(results)


def route(store: Store, record: FunctionRecord, header: HeaderGetter | None = None) -> FunctionRecord:
    """The version one invocation through `record` runs: through an alias with an additional
    version, chosen by its rules (requests with headers only) or at random by its weight."""
    if not record.alias:
        return record
    alias = store.aliases.get(record.key, {}).get(record.alias)
    if alias is None or not alias.additional:
        return record
    extra = alias.additional
    strategy = alias.additional_version_strategy.get(extra)
    if strategy is not None:
        chosen = header is not None and rules_match(strategy, header)
    else:
        weight = alias.additional_version_weights.get(extra, 0)
        chosen = random.random() * 100 < weight
    if not chosen:
        return record
    version = store.version(record.key, extra)
    return record if version is None else alias_view(version, alias)


def exact(store: Store, record: FunctionRecord) -> FunctionRecord | None:
    """The stored state of the version `record` is a copy of (None: deleted)."""
    return store.version(record.key, record.version)


def reserved_targets(store: Store) -> list[FunctionRecord]:
    """Every record whose reserved instances are kept: latest, versions, aliases (as their main version)."""
    found = list(store.functions.values())
    for versions in store.versions.values():
        found += versions.values()
    for key, aliases in store.aliases.items():
        for alias in aliases.values():
            version = store.version(key, alias.version)
            if version is not None:
                found.append(alias_view(version, alias))
    return found


def qualifier_key(record: FunctionRecord) -> tuple[str, str, str, str, str]:
    """Instances are never shared across these: function, version, alias."""
    return (*record.key, record.version, record.alias)


def is_latest(record: FunctionRecord) -> bool:
    return record.version == "latest" and not record.alias


def default_version_name(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("v%Y%m%d-%H%M%S")


class Versions:
    """Publishing, listing and deleting versions; aliases; per-qualifier scaling settings."""

    def __init__(self, store: Store, region: str) -> None:
        self._store = store
        self.region = region
        # Version and alias changes one at a time: the limits and the no-change rule are
        # checked and applied with nothing in between (two publishes at once make one version).
        self._lock = trio.Lock()
        # Set by the daemon: stops the instances of a version or alias that goes.
        self.on_gone: Callable[[Key, str | None, str | None], None] = lambda key, version, alias: None

    # Versions ---------------------------------------------------------------------

    def list(self, key: Key) -> list[FunctionRecord]:
        """latest first, then the published versions, oldest first."""
        latest = self._store.get(key)
        published = list(self._store.versions.get(key, {}).values())
        return ([latest] if latest is not None else []) + published

    async def publish(self, record: FunctionRecord, body: object) -> FunctionRecord:
        request: PublishVersion = convert(body if body is not None else {}, PublishVersion, "the version")
        async with self._lock:
            latest = self._store.get(record.key)
            if latest is None:
                raise NotFound(f"function {_name(record.key)} was deleted")
            now = time.time()
            name = request.version or default_version_name(now)
            if name == "latest" or not re.match(VERSION_NAME_RE, name):
                raise InvalidParameter(
                    f"version {name!r} must be 1-42 letters, digits, '.', '_' or '-', starting with a letter "
                    "or digit, and not 'latest'"
                )
            if request.digest and request.digest != latest.code.sha512:
                raise InvalidParameter(
                    "digest does not match latest's code (its sha512 is the config's `digest`): "
                    "the code changed since you read it"
                )
            published = self._store.versions.get(record.key, {})
            if name in published:
                raise VersionExists(f"function {_name(record.key)} already has a version {name!r}")
            if name in self._store.aliases.get(record.key, {}):
                raise VersionExists(f"function {_name(record.key)} has an alias {name!r}; versions and aliases differ")
            if published:
                last = list(published.values())[-1]
                if fingerprint(last) == fingerprint(latest):
                    raise NothingToPublish(
                        f"nothing changed since version {last.version!r} was published; change latest's code "
                        "or configuration first"
                    )
            if len(published) >= MAX_VERSIONS - 1:
                raise InvalidParameter(
                    f"function {_name(record.key)} has {MAX_VERSIONS} versions (latest included), the limit; "
                    "delete one first"
                )
            frozen = msgspec.structs.replace(
                latest,
                version=name,
                version_description=request.description,
                last_modified=now,
                # Scaling settings are the version's own, from none.
                reserved=0,
                reserved_idle_mode=False,
                max_instances=None,
                async_config=type(latest.async_config)(),
                async_created=0.0,
                async_modified=0.0,
            )
            outcome = await self._store.publish(frozen)
        if outcome == "exists":
            raise VersionExists(f"function {_name(record.key)} already has a version {name!r}")
        if outcome == "full":
            raise InvalidParameter(f"function {_name(record.key)} has {MAX_VERSIONS} versions, the limit")
        if outcome == "gone":
            raise NotFound(f"function {_name(record.key)} was deleted")
        return frozen

    def additional_of(self, key: Key, version: str) -> list[str]:
        return sorted(a.name for a in self._store.aliases.get(key, {}).values() if a.additional == version)

    async def delete_version(self, record: FunctionRecord) -> None:
        """DELETE of a version's URN: the version, its aliases, and their triggers."""
        if record.alias:
            raise InvalidParameter(
                f"{_name(record.key)}:!{record.alias} is an alias: delete it with DELETE .../aliases/{record.alias}"
            )
        async with self._lock:
            key, version = record.key, record.version
            if version not in self._store.versions.get(key, {}):
                raise VersionNotFound(f"function {_name(key)} has no version {version!r}")
            users = self.additional_of(key, version)
            if users:
                raise AdditionalVersionInUse(
                    f"version {version!r} of {_name(key)} is the additional version of alias "
                    f"{', '.join(users)}; change or remove that first"
                )
            aliases = sorted(a.name for a in self._store.aliases.get(key, {}).values() if a.version == version)
            bound = {version, *(f"!{a}" for a in aliases), *aliases}
            triggers = [t.trigger_id for t in self._store.triggers.values() if t.key == key and t.qualifier in bound]
            await self._store.delete_version(key, version, aliases, triggers)
        self.on_gone(key, version, None)
        for name in aliases:
            self.on_gone(key, None, name)

    # Aliases ------------------------------------------------------------------------

    def alias(self, key: Key, name: str) -> AliasRecord:
        alias = self._store.aliases.get(key, {}).get(name)
        if alias is None:
            raise AliasNotFound(f"function {_name(key)} has no alias {name!r}")
        return alias

    def aliases(self, key: Key) -> list[AliasRecord]:
        return sorted(self._store.aliases.get(key, {}).values(), key=lambda a: a.created)

    def answer(self, record: FunctionRecord, alias: AliasRecord) -> AliasAnswer:
        return AliasAnswer(
            name=alias.name,
            version=alias.version,
            description=alias.description,
            last_modified=timestamp(alias.last_modified),
            alias_urn=function_urn(self.region, record, f"!{alias.name}"),
            additional_version_weights=dict(alias.additional_version_weights),
            additional_version_strategy=dict(alias.additional_version_strategy),
        )

    def _check_alias(self, key: Key, request: UpdateAlias, name: str) -> None:
        versions = self._store.versions.get(key, {})
        for version in (request.version, *request.additional_version_weights, *request.additional_version_strategy):
            if version != "latest" and version not in versions:
                raise VersionNotFound(f"function {_name(key)} has no version {version!r}")
        if request.additional_version_weights and request.additional_version_strategy:
            raise InvalidParameter(
                "additional_version_weights and additional_version_strategy are exclusive: "
                "route by weight or by header rules, not both"
            )
        extra = next(iter(request.additional_version_weights or request.additional_version_strategy), "")
        if extra == "latest":
            raise InvalidParameter("an alias's additional version must be a published version, not latest")
        if extra and extra == request.version:
            raise SameVersions(f"alias {name!r}: the additional version {extra!r} is its main version")
        if name in versions:
            raise AliasExists(f"function {_name(key)} has a version {name!r}; versions and aliases differ")

    async def create_alias(self, record: FunctionRecord, body: object) -> AliasRecord:
        request: CreateAlias = convert(body, CreateAlias, "the alias")
        async with self._lock:
            key = record.key
            if request.name in self._store.aliases.get(key, {}):
                raise AliasExists(f"function {_name(key)} already has an alias {request.name!r}")
            if len(self._store.aliases.get(key, {})) >= MAX_ALIASES:
                raise InvalidParameter(f"function {_name(key)} has {MAX_ALIASES} aliases, the limit; delete one first")
            self._check_alias(key, request, request.name)
            now = time.time()
            alias = AliasRecord(
                name=request.name,
                version=request.version,
                description=request.description,
                additional_version_weights=dict(request.additional_version_weights),
                additional_version_strategy=dict(request.additional_version_strategy),
                created=now,
                last_modified=now,
            )
            if not await self._store.put_alias(key, alias):
                raise NotFound(f"function {_name(key)} was deleted")
        return alias

    async def update_alias(self, record: FunctionRecord, name: str, body: object) -> AliasRecord:
        request: UpdateAlias = convert(body, UpdateAlias, "the alias")
        async with self._lock:
            key = record.key
            current = self.alias(key, name)
            self._check_alias(key, request, name)
            if current.reserved and request.version != current.version:
                self.check_reserved_rule(key, request.version, name, current.reserved)
            updated = msgspec.structs.replace(
                current,
                version=request.version,
                description=request.description,
                additional_version_weights=dict(request.additional_version_weights),
                additional_version_strategy=dict(request.additional_version_strategy),
                last_modified=time.time(),
            )
            if not await self._store.put_alias(key, updated):
                raise NotFound(f"function {_name(key)} was deleted")
        if updated.version != current.version or updated.additional != current.additional:
            # Its instances run the versions it pointed at: they go (busy ones after their request).
            self.on_gone(key, None, name)
        return updated

    async def delete_alias(self, record: FunctionRecord, name: str) -> None:
        async with self._lock:
            key = record.key
            self.alias(key, name)
            bound = [
                t.trigger_id
                for t in self._store.triggers.values()
                if t.key == key and t.qualifier in (f"!{name}", name)
            ]
            if bound:
                raise AliasHasTriggers(
                    f"alias {name!r} of {_name(key)} is bound to trigger {', '.join(sorted(bound))}; delete those first"
                )
            await self._store.delete_alias(key, name)
        self.on_gone(key, None, name)

    # Scaling settings of a version or alias -----------------------------------------

    def check_reserved_rule(self, key: Key, version: str, alias: str | None, count: int) -> None:
        """FunctionGraph's rule: reserved instances on an alias or on the version it points at, not both."""
        if not count:
            return
        if alias is not None:
            target = self._store.version(key, version)
            if target is not None and target.reserved:
                raise InvalidParameter(
                    f"version {version!r} has {target.reserved} reserved instances of its own; reserved "
                    f"instances go on an alias or on the version it points at, not both (set them to 0 there first)"
                )
            return
        holders = sorted(
            a.name for a in self._store.aliases.get(key, {}).values() if a.version == version and a.reserved
        )
        if holders:
            raise InvalidParameter(
                f"alias {', '.join(holders)} points at version {version!r} and has reserved instances; "
                "reserved instances go on an alias or on the version it points at, not both"
            )

    async def set_scaling(self, record: FunctionRecord, **changes: object) -> FunctionRecord:
        """Store scaling settings on the version or alias `record` was looked up through; the
        record as invocations through that qualifier see it now."""
        async with self._lock:
            key = record.key
            if "reserved" in changes:
                self.check_reserved_rule(key, record.version, record.alias or None, int(changes["reserved"]))  # type: ignore[arg-type]
            if record.alias:
                alias = self.alias(key, record.alias)
                updated_alias = msgspec.structs.replace(alias, **changes)
                if not await self._store.put_alias(key, updated_alias):
                    raise NotFound(f"function {_name(key)} was deleted")
                return _alias_target(self._store, key, record.alias)
            current = self._store.versions.get(key, {}).get(record.version)
            if current is None:
                raise VersionNotFound(f"function {_name(key)} has no version {record.version!r}")
            updated = msgspec.structs.replace(current, **changes)
            if not await self._store.replace_version(updated):
                raise VersionNotFound(f"function {_name(key)} has no version {record.version!r}")
            return updated
