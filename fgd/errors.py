"""Platform errors: each carries its HTTP status and FunctionGraph error code.

Callers raise the most specific class; the HTTP layer turns any of them into
`{"error_code": ..., "error_msg": ...}`. The codes are listed in docs/errors.md.
"""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, frozen=True):
    error_code: str
    error_msg: str


class FgdError(Exception):
    status = 500
    code = "FSS.0500"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> ErrorBody:
        return ErrorBody(self.code, self.message)


class InvalidParameter(FgdError):
    status = 400
    code = "FSS.0400"


class InvalidInstanceMemory(InvalidParameter):
    """X-Cff-Instance-Memory is not usable (FunctionGraph's FSS.0406)."""

    code = "FSS.0406"


class Unauthorized(FgdError):
    status = 401
    code = "FSS.0401"


class Forbidden(FgdError):
    status = 403
    code = "FSS.0403"


class NotFound(FgdError):
    status = 404
    code = "FSS.0404"


class MethodNotAllowed(FgdError):
    status = 405
    code = "FSS.0405"


class Conflict(FgdError):
    status = 409
    code = "FSS.0409"


class TooLarge(FgdError):
    status = 413
    code = "FSS.0413"


class Throttled(FgdError):
    status = 429
    code = "FSS.0429"


class InternalError(FgdError):
    status = 500
    code = "FSS.0500"


class Unavailable(FgdError):
    status = 503
    code = "FSS.0503"


# Versions and aliases: FunctionGraph's own codes (docs/errors.md).


class VersionNotFound(NotFound):
    code = "FSS.1052"


class AliasNotFound(NotFound):
    code = "FSS.1053"


class VersionExists(Conflict):
    code = "FSS.1062"


class AliasExists(Conflict):
    code = "FSS.1063"


class NothingToPublish(InvalidParameter):
    """Publishing with no change to code or configuration since the last published version."""

    code = "FSS.1016"


class SameVersions(InvalidParameter):
    """An alias's additional version is its main version."""

    code = "FSS.1093"


class AdditionalVersionInUse(Conflict):
    """Deleting a version an alias sends part of its traffic to."""

    code = "FSS.1094"


class AliasHasTriggers(Conflict):
    code = "FSS.1154"
