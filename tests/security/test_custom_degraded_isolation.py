"""A host without network namespaces (degraded): every instance's runtime API listens on the
host's loopback, where another function's bootstrap can connect to it. It must not get that
instance's invocations (their events and the agency's credentials) nor answer them.

The bootstraps are C programs: without mounts an interpreter could not open a script in the
code directory (a 0700 state dir) as the function's own uid; a program is executed by fd.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Api, running
from tests.integration.custom_support import compile_c, deploy
from tests.integration.test_custom_runtime import C_ECHO

# C_ECHO's exchange(), and a main that echoes with its own API address, or, given
# {"victim": port}, asks that port for work three times and says what came.
PROGRAM = (
    C_ECHO.split("int main(void)")[0]
    + r"""
#include <sys/time.h>

static int stolen(int port) {
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval wait = {2, 500000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) { close(fd); return 0; }
    const char *get = "GET /v1/runtime/invocation/request HTTP/1.1\r\nHost: api\r\n\r\n";
    write(fd, get, strlen(get));
    char buf[65536];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    return strcasestr(buf, "x-cff-request-id") != NULL;
}

int main(void) {
    for (;;) {
        const char *get = "GET /v1/runtime/invocation/request HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
        size_t n;
        char *answer = exchange(get, strlen(get), &n);
        char *id = strcasestr(answer, "x-cff-request-id: ") + 18;
        char rid[128];
        size_t len = strcspn(id, "\r\n");
        memcpy(rid, id, len);
        rid[len] = 0;
        char *event = strstr(answer, "\r\n\r\n") + 4;
        char body[8192];
        int blen;
        char *victim = strstr(event, "\"victim\":");
        if (victim) {
            int port = atoi(victim + 9), got = 0;
            for (int i = 0; i < 3; i++) got += stolen(port);
            blen = snprintf(body, sizeof body, "{\"stolen\": %d}", got);
        } else {
            blen = snprintf(body, sizeof body, "{\"addr\": \"%s\", \"event\": %s}", getenv("RUNTIME_API_ADDR"), event);
        }
        char request[9000];
        int rlen = snprintf(request, sizeof request,
            "POST /v1/runtime/invocation/response/%s HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
            "Content-Length: %d\r\n\r\n%s", rid, blen, body);
        free(answer);
        free(exchange(request, rlen, &n));
    }
}
"""
)


@pytest.fixture(scope="module")
def shared_loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    config = '[sandbox]\nallow_degraded = true\ndisable = ["namespaces"]\n'
    with running(Path(tmp_path_factory.mktemp("custom-shared-loopback")) / "state", config) as daemon:
        yield Api(daemon)


def test_another_functions_bootstrap_cannot_take_an_instances_invocations(shared_loopback: Api) -> None:
    api = shared_loopback
    program = compile_c(PROGRAM)
    victim = deploy(api, "Custom", {"bootstrap": program})
    thief = deploy(api, "Custom", {"bootstrap": program}, timeout=10)
    first = api.invoke(victim, {"n": 0}).json()
    assert "addr" in first, first
    port = int(first["addr"].rsplit(":", 1)[1])
    stolen: dict = {}
    thread = threading.Thread(target=lambda: stolen.update(api.invoke(thief, {"victim": port}).json()))
    thread.start()
    time.sleep(1)  # the thief's instance starts and its first GET waits at the victim's API
    # The victim's own GET waits first in line; its next ones queued behind the thief's.
    answers = [api.invoke(victim, {"n": n}).json() for n in (1, 2, 3)]
    thread.join()
    assert stolen == {"stolen": 0}, stolen
    assert [answer.get("event") for answer in answers] == [{"n": 1}, {"n": 2}, {"n": 3}], answers
