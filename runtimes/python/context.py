"""FunctionGraph's `context` object for Python handlers, and its logger.

Runs inside the instance on whatever interpreter serves the function (Python 3.6 and
later): no annotations that need `from __future__`, no syntax or APIs newer than 3.6.
"""

import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

# Logger levels by name; FunctionGraph's samples spell WARN and WARNING, Python's logging
# module passes numbers (logging.INFO == 20), both are accepted.
LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARN", 40: "ERROR", 50: "CRITICAL"}
DEFAULT_LEVEL = 20
# The user-data variable FunctionGraph's samples set to choose the logger's level.
LOG_LEVEL_VARIABLE = "RUNTIME_LOG_LEVEL"


def parse_level(level: Any) -> int:
    """A level number from a number or a name; ValueError for anything else."""
    if isinstance(level, bool):
        raise ValueError(f"Unknown level: {level!r}")
    if isinstance(level, int):
        return level
    if isinstance(level, str) and level.strip().upper() in LEVELS:
        return LEVELS[level.strip().upper()]
    if isinstance(level, str) and level.strip().isdigit():
        return int(level.strip())
    raise ValueError(f"Unknown level: {level!r}")


def level_name(level: int) -> str:
    return LEVEL_NAMES.get(level, f"LEVEL {level}")


class _LoggerState:
    """The threshold is the instance's, not one invocation's: setLevel in the initializer or
    in one request holds for the requests after it (one function per process)."""

    level = None  # type: Optional[int]


def reset_logger_level() -> None:
    """Forget the level (runtimes/python/instance.py's warm-up ran a logger before the function's)."""
    _LoggerState.level = None


def initial_level(user_data: Dict[str, str]) -> int:
    try:
        return parse_level(user_data.get(LOG_LEVEL_VARIABLE, DEFAULT_LEVEL))
    except ValueError:
        return DEFAULT_LEVEL


class RuntimeLogger:
    """`context.getLogger()`: FunctionGraph's logger; each line carries the request id."""

    def __init__(self, emit: Callable[[str, str], None], user_data: Optional[Dict[str, str]] = None) -> None:
        self._emit = emit
        if _LoggerState.level is None:
            _LoggerState.level = initial_level(user_data or {})

    def setLevel(self, level: Any) -> None:  # noqa: N802 - FunctionGraph's names
        _LoggerState.level = parse_level(level)

    def getLevel(self) -> int:  # noqa: N802
        return _LoggerState.level if _LoggerState.level is not None else DEFAULT_LEVEL

    def isEnabledFor(self, level: Any) -> bool:  # noqa: N802 - as logging.Logger has it
        return parse_level(level) >= self.getLevel()

    def _log(self, level: int, message: object, args: tuple, exc_info: Any = None) -> None:
        if level < self.getLevel():
            return
        text = str(message)
        if args:
            # As logging does: one non-empty mapping fills named fields ("%(user)s").
            values = args[0] if len(args) == 1 and isinstance(args[0], Mapping) and args[0] else args
            try:
                text = text % values
            except (TypeError, ValueError, KeyError):
                text = " ".join([text] + [str(arg) for arg in args])
        if exc_info:
            if exc_info is True:
                exc_info = sys.exc_info()
            elif isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            if exc_info[0] is not None:
                text = text + "\n" + "".join(traceback.format_exception(*exc_info)).rstrip("\n")
        self._emit(level_name(level), text)

    def log(self, level: Any, message: object, *args: object, **kwargs: Any) -> None:
        self._log(parse_level(level), message, args, kwargs.get("exc_info"))

    def debug(self, message: object, *args: object, **kwargs: Any) -> None:
        self._log(10, message, args, kwargs.get("exc_info"))

    def info(self, message: object, *args: object, **kwargs: Any) -> None:
        self._log(20, message, args, kwargs.get("exc_info"))

    def warn(self, message: object, *args: object, **kwargs: Any) -> None:
        self._log(30, message, args, kwargs.get("exc_info"))

    def warning(self, message: object, *args: object, **kwargs: Any) -> None:
        self._log(30, message, args, kwargs.get("exc_info"))

    def error(self, message: object, *args: object, **kwargs: Any) -> None:
        self._log(40, message, args, kwargs.get("exc_info"))

    def critical(self, message: object, *args: object, **kwargs: Any) -> None:
        self._log(50, message, args, kwargs.get("exc_info"))

    def exception(self, message: object, *args: object, **kwargs: Any) -> None:
        """An ERROR line with the trace of the exception being handled (as logging's)."""
        self._log(40, message, args, kwargs.get("exc_info", True))


# The credential set's fields (fgd.agencies.Credentials), as the frames carry them.
ACCESS_KEY = "access_key"
SECRET_KEY = "secret_key"
SECURITY_TOKEN = "security_token"
AUTH_TOKEN = "auth_token"


class Context:
    """What a handler receives as its second argument (and an initializer as its only one)."""

    def __init__(
        self,
        identity: Any,
        request_id: str,
        deadline: float,
        emit: Callable[[str, str, str], None],
        credentials: Optional[Dict[str, str]] = None,
    ) -> None:
        self._identity = identity
        self._request_id = request_id
        self._deadline = deadline
        self._started = time.monotonic()
        # The instance's current agency credentials (renewed when the agency's file changes).
        self._credentials = identity.credentials if credentials is None else credentials
        self._logger = RuntimeLogger(lambda level, text: emit(request_id, level, text), identity.user_data)

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

    def getUserData(self, key: str, default: Optional[str] = None) -> Optional[str]:  # noqa: N802
        return self._identity.user_data.get(key, default)

    def getLogger(self) -> RuntimeLogger:  # noqa: N802
        return self._logger

    # Credentials of the function's execution agency (app_xrole, else xrole; see fgd.agencies).
    # On FunctionGraph both key pairs are the agency's temporary credentials: getAccessKey and
    # getSecretKey are the older names of getSecurityAccessKey and getSecuritySecretKey.
    # Empty strings when the function names no agency.

    def _credential(self, name: str) -> str:
        return self._credentials.get(name, "")

    def getAccessKey(self) -> str:  # noqa: N802
        return self._credential(ACCESS_KEY)

    def getSecretKey(self) -> str:  # noqa: N802
        return self._credential(SECRET_KEY)

    def getSecurityAccessKey(self) -> str:  # noqa: N802
        return self._credential(ACCESS_KEY)

    def getSecuritySecretKey(self) -> str:  # noqa: N802
        return self._credential(SECRET_KEY)

    def getSecurityToken(self) -> str:  # noqa: N802
        return self._credential(SECURITY_TOKEN)

    def getToken(self) -> str:  # noqa: N802
        """The agency's IAM token (X-Auth-Token)."""
        return self._credential(AUTH_TOKEN)
