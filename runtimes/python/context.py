"""FunctionGraph's `context` object for Python handlers."""

from __future__ import annotations

import time
from collections.abc import Callable

from runtimes.protocol import FunctionIdentity


class RuntimeLogger:
    """`context.getLogger()`: lines carry the request id of the invocation."""

    def __init__(self, emit: Callable[[str, str], None]) -> None:
        self._emit = emit

    def _log(self, level: str, message: object, args: tuple) -> None:
        text = str(message)
        if args:
            try:
                text = text % args
            except (TypeError, ValueError):
                text = " ".join([text, *map(str, args)])
        self._emit(level, text)

    def debug(self, message: object, *args: object) -> None:
        self._log("DEBUG", message, args)

    def info(self, message: object, *args: object) -> None:
        self._log("INFO", message, args)

    def warn(self, message: object, *args: object) -> None:
        self._log("WARN", message, args)

    warning = warn

    def error(self, message: object, *args: object) -> None:
        self._log("ERROR", message, args)


class Context:
    """What a handler receives as its second argument."""

    def __init__(
        self,
        identity: FunctionIdentity,
        request_id: str,
        deadline: float,
        emit: Callable[[str, str, str], None],
    ) -> None:
        self._identity = identity
        self._request_id = request_id
        self._deadline = deadline
        self._started = time.monotonic()
        self._logger = RuntimeLogger(lambda level, text: emit(request_id, level, text))

    def getRequestID(self) -> str:  # noqa: N802 - FunctionGraph's names
        return self._request_id

    def getRemainingTimeInMilliSeconds(self) -> int:  # noqa: N802
        return max(0, int((self._deadline - time.time()) * 1000))

    def getRunningTimeInSeconds(self) -> int:  # noqa: N802
        return self._identity.timeout

    def getFunctionName(self) -> str:  # noqa: N802
        return self._identity.func_name

    def getVersion(self) -> str:  # noqa: N802
        return self._identity.version

    def getAlias(self) -> str:  # noqa: N802
        return self._identity.alias

    def getMemorySize(self) -> int:  # noqa: N802
        return self._identity.memory_size

    def getCPUNumber(self) -> int:  # noqa: N802
        return self._identity.cpu

    def getPackage(self) -> str:  # noqa: N802
        return self._identity.package

    def getProjectID(self) -> str:  # noqa: N802
        return self._identity.project_id

    def getUserData(self, key: str, default: str | None = None) -> str | None:  # noqa: N802
        return self._identity.user_data.get(key, default)

    def getLogger(self) -> RuntimeLogger:  # noqa: N802
        return self._logger

    def _credential(self, name: str) -> str:
        return self._identity.credentials.get(name, "")

    def getToken(self) -> str:  # noqa: N802
        return self._credential("token")

    def getAccessKey(self) -> str:  # noqa: N802
        return self._credential("access_key")

    def getSecretKey(self) -> str:  # noqa: N802
        return self._credential("secret_key")

    def getSecurityAccessKey(self) -> str:  # noqa: N802
        return self._credential("security_access_key")

    def getSecuritySecretKey(self) -> str:  # noqa: N802
        return self._credential("security_secret_key")

    def getSecurityToken(self) -> str:  # noqa: N802
        return self._credential("security_token")
