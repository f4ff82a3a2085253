"""The OpenAPI 3.1 document of the whole API, generated from the route declarations.

Every management route is declared with `fgd.web.api.common.route`, which registers its handler;
the front's invoke route is declared in `fgd.web.front`. This module turns those declarations,
and the msgspec Structs they name, into one document: it cannot miss a route or describe a
shape the code does not use. `GET /v2/openapi.json` serves it; `fgd openapi` prints it offline.
"""

from __future__ import annotations

import copy
import re
from typing import Any, cast

import msgspec
from quart import Response

from fgd import __version__
from fgd.errors import ErrorBody
from fgd.model import PROJECT_RE
from fgd.web import front
from fgd.web.api.common import Operation, Partial, json_response, operations, route

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{name}"
RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>[A-Za-z_]+)>")
# error_code is FSS.0<status>, or one of FunctionGraph's own codes (docs/errors.md).
ERROR_TEXT = {
    400: "invalid argument (FSS.0400; FSS.0406 an unusable X-Cff-Instance-Memory; FSS.1016, FSS.1093 versions)",
    401: "no valid credentials (FSS.0401)",
    403: "not allowed (FSS.0403)",
    404: "no such function or resource (FSS.0404; FSS.1052 no such version, FSS.1053 no such alias)",
    409: "conflicts with the resource's state (FSS.0409, or FunctionGraph's code: FSS.1062, FSS.1063, ...)",
    413: "the request body is over its limit (FSS.0413)",
    429: "over a capacity or queue limit; send again later (FSS.0429)",
    503: "the node cannot take the request now; send again shortly (FSS.0503)",
}
PATH_PARAMETERS: dict[str, tuple[dict[str, Any], str]] = {
    "project_id": ({"type": "string", "pattern": PROJECT_RE.pattern}, "the project"),
    "urn": (
        {"type": "string", "minLength": 1},
        "a function URN (urn:fss:<region>:<project_id>:function:<package>:<name>[:latest]), package:name, "
        "or a bare name (package default)",
    ),
}
# On every answer (fgd.web.requestid): an invocation's is its X-Cff-Request-Id.
EVERY_ANSWER_HEADERS = {
    "X-Request-Id": {
        "required": True,
        "description": "the request's id (an invocation's X-Cff-Request-Id)",
        "schema": {"type": "string", "minLength": 1},
    }
}
SECURITY_SCHEMES = {
    "token": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Auth-Token",
        "description": "the node's admin token (<state-dir>/admin.token); `Authorization: Bearer <token>` also works",
    },
    "bearer": {"type": "http", "scheme": "bearer", "description": "the admin token as a bearer token"},
    "aksk": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "AK/SK signing as the FunctionGraph SDKs do it: `SDK-HMAC-SHA256 Access=..., "
        "SignedHeaders=..., Signature=...` with an X-Sdk-Date header; keys from `fgd keys create`",
    },
}


def all_operations(app: Any) -> list[Operation]:
    """What the API serves: the routes declared on the management app, and the front's."""
    return [*operations(app), *front.OPERATIONS]


def openapi_path(rule: str) -> str:
    return RULE_ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule)


def document(app: Any) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation `app` and the front serve."""
    ops = all_operations(app)
    builder = _Builder()
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = builder.operation(op)
    return ecma_patterns(
        {
            "openapi": OPENAPI_VERSION,
            "info": {
                "title": "fgd",
                "version": __version__,
                "description": "A single-node serverless function runtime compatible with Huawei Cloud "
                "FunctionGraph: the management API, synchronous invocation, health and metrics. "
                "Generated from the code (fgd.web.openapi).",
            },
            "servers": [{"url": "http://127.0.0.1:8900", "description": "the default listener"}],
            "security": [{name: []} for name in SECURITY_SCHEMES],
            "tags": [{"name": tag} for tag in dict.fromkeys(op.tag for op in ops)],
            "paths": paths,
            "components": {"schemas": builder.components(), "securitySchemes": SECURITY_SCHEMES},
        }
    )


class _Builder:
    """Collects the types the operations name; their schemas are made together at the end, so
    each Struct is one component referenced everywhere."""

    def __init__(self) -> None:
        self._types: list[Any] = [ErrorBody]
        self._partials: dict[str, type[msgspec.Struct]] = {}
        self._pending: list[tuple[dict[str, Any], int]] = []

    def _schema(self, kind: Any) -> dict[str, Any]:
        """A placeholder filled in by `components` with `kind`'s schema (a $ref for a Struct)."""
        if isinstance(kind, Partial):
            name = f"{kind.struct.__name__}Patch"
            self._partials[name] = kind.struct
            self._types.append(kind.struct)
            return {"$ref": REF.format(name=name)}
        if kind is Any:
            return {}
        if kind is bytes:
            return {"type": "string", "format": "binary"}
        holder: dict[str, Any] = {}
        self._types.append(kind)
        self._pending.append((holder, len(self._types) - 1))
        return holder

    def components(self) -> dict[str, Any]:
        schemas, components = msgspec.json.schema_components(
            self._types, schema_hook=any_object_schema, ref_template=REF
        )
        for holder, index in self._pending:
            holder.update(schemas[index])
        for name, struct in self._partials.items():
            partial = copy.deepcopy(components[struct.__name__])
            partial.pop("required", None)
            partial["title"] = name
            partial["description"] = f"Any of {struct.__name__}'s fields; those left out keep their value."
            components[name] = partial
        return dict(sorted(components.items()))

    def operation(self, op: Operation) -> dict[str, Any]:
        parameters = [self._path_parameter(m["name"], m["converter"]) for m in RULE_ARGUMENT.finditer(op.path)]
        if op.query is not None:
            parameters += _struct_parameters(op.query, "query")
        if op.headers is not None:
            parameters += _struct_parameters(op.headers, "header")
        described: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "tags": [op.tag],
        }
        if parameters:
            described["parameters"] = parameters
        if op.body is not None:
            content = {"application/json": {"schema": self._schema(op.body)}}
            if op.raw_zip is not None:
                content["application/zip"] = {"schema": {"type": "string", "format": "binary"}}
            described["requestBody"] = {"required": not op.body_optional, "content": content}
            if op.raw_zip is not None:
                # Arguments of the raw form; the JSON form carries them in its body.
                for parameter in _struct_parameters(op.raw_zip, "query"):
                    parameter["required"] = False
                    parameter["description"] = "with a raw zip body (Content-Type: application/zip) only"
                    described["parameters"] = [*described.get("parameters", []), parameter]
        responses: dict[str, Any] = {str(op.status): self._answer(op, op.answer, op.content_type)}
        if op.answer_headers is not None:
            responses[str(op.status)]["headers"] = {
                parameter["name"]: {"required": parameter["required"], "schema": parameter["schema"]}
                for parameter in _struct_parameters(op.answer_headers, "header")
            }
        for status, kind in (op.alternatives or {}).items():
            responses[str(status)] = self._answer(op, kind, op.content_type)
        for status in sorted(set(op.errors) | self._implied_errors(op)):
            responses.setdefault(
                str(status),
                {
                    "description": ERROR_TEXT.get(status, "error"),
                    "content": {"application/json": {"schema": self._schema(ErrorBody)}},
                },
            )
        for answer in responses.values():
            answer["headers"] = {**EVERY_ANSWER_HEADERS, **answer.get("headers", {})}
        described["responses"] = dict(sorted(responses.items()))
        if not op.auth:
            described["security"] = []
        return described

    def _answer(self, op: Operation, kind: Any, content_type: str) -> dict[str, Any]:
        if kind is None:
            return {"description": "done; no body"}
        answer: dict[str, Any] = {"description": op.summary, "content": {content_type: {"schema": self._schema(kind)}}}
        for media, variant in (op.variants or {}).items():
            answer["content"][media] = {"schema": self._schema(variant)}
        return answer

    @staticmethod
    def _implied_errors(op: Operation) -> set[int]:
        """Errors every route of this shape can give, whatever its handler does."""
        # An access key works for its own project only: 403 elsewhere (fgd.web.auth).
        implied = {401, 403} if op.auth else set()
        arguments = [m["name"] for m in RULE_ARGUMENT.finditer(op.path)]
        if arguments or op.query is not None or op.headers is not None or op.body is not None:
            implied.add(400)
        if any(name != "project_id" for name in arguments):
            implied.add(404)
        if op.body is not None:
            implied.add(413)
        return implied

    @staticmethod
    def _path_parameter(name: str, converter: str | None) -> dict[str, Any]:
        if converter == "int":
            schema, description = {"type": "integer", "minimum": 0}, name
        else:
            schema, description = PATH_PARAMETERS.get(name, ({"type": "string", "minLength": 1}, name))
        return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def any_object_schema(kind: Any) -> dict[str, Any]:
    """`object` in a Struct (any JSON value, e.g. dict[str, object]) has no schema of msgspec's own."""
    if kind is object:
        # Not {}: msgspec takes an empty schema for "no schema".
        return {"description": "any JSON value"}
    raise NotImplementedError(kind)


def ecma_patterns(schema: Any) -> Any:
    """`schema` with its regular expressions in JSON Schema's dialect (ECMA-262): Python's `\\Z`
    (the very end, not before a final newline) is `$` there, which never matches before one."""
    if isinstance(schema, dict):
        return {
            key: value.replace("\\Z", "$") if key == "pattern" and isinstance(value, str) else ecma_patterns(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [ecma_patterns(item) for item in schema]
    return schema


def _struct_parameters(struct: type[msgspec.Struct], where: str) -> list[dict[str, Any]]:
    """One parameter per field of `struct`: its schema inline, required if it has no default."""
    (schema,), components = msgspec.json.schema_components([struct], schema_hook=any_object_schema, ref_template=REF)
    described = components[cast(str, schema["$ref"]).rsplit("/", 1)[-1]]
    required = set(described.get("required", ()))
    return [
        {"name": name, "in": where, "required": name in required, "schema": _nullable_off(field)}
        for name, field in described["properties"].items()
    ]


def _nullable_off(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter left out is how one says "none": `X | None` describes it as plain `X`."""
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        schema = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
        schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
    return schema


def register(app: Any) -> None:
    """Serve the document at /v2/openapi.json (authenticated, like every /v2 route)."""

    @route(app, "GET", "/v2/openapi.json", answer=dict[str, Any])
    async def openapi_document() -> Response:
        """this document"""
        return json_response(app.extensions.setdefault("fgd.openapi", document(app)))


class _Unserved:
    """Stands in for the daemon's services while routes are only declared: a route module may
    read the context as it registers (ctx.metrics.history); any attribute is another stand-in."""

    def __getattr__(self, name: str) -> _Unserved:
        return self


def declared_app() -> Any:
    """The management app with every route declared, for its declarations only: no handler may run."""
    # Imported here: fgd.web.api imports this module.
    from fgd.web.api import create_app

    return create_app(cast(Any, _Unserved()))


def offline_document() -> dict[str, Any]:
    """The document without a daemon (`fgd openapi`)."""
    return document(declared_app())
