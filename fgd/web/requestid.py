"""X-Request-Id on every answer of a listener (the API and the gateway, errors included).

A fresh id per request; an invocation's answer carries its X-Cff-Request-Id under both
names, so a caller can quote either. A function behind an APIG route cannot set its own
X-Request-Id: the gateway's id replaces it (two would leave the caller guessing). The HTTP
server stamps it as it writes a response head (fgd.web.connection), its own answers (400,
408, 431, 500) included.
"""

from __future__ import annotations

REQUEST_ID = b"x-request-id"
CFF_REQUEST_ID = b"x-cff-request-id"
