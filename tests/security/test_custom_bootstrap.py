"""The security suite's attacks from a Custom `bootstrap` that is a C program calling the kernel directly.

No interpreter in between: the system calls go out exactly as written, with
their raw numbers. Each must fail as it does for a Python function, and the
daemon must go on serving others.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Api
from tests.integration.custom_support import C_RUNTIME_API_CLIENT, compile_c, deploy

ATTACKER = (
    r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/if_ether.h>

static char out[65536];
static size_t used;

static void add(const char *format, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void add(const char *format, ...) {
    va_list args;
    va_start(args, format);
    used += vsnprintf(out + used, sizeof out - used, format, args);
    va_end(args);
}

/* "name": errno of the call (0 if it succeeded). */
static void result(const char *name, long value) {
    add("\"%s\": %d, ", name, value < 0 ? errno : 0);
}

"""
    + C_RUNTIME_API_CLIENT
    + r"""
static int connect_to(int port) {
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int saved = errno;
    close(fd);
    errno = saved;
    return r;
}

static void attack(const char *event) {
    used = 0;
    add("{");
    result("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL));
    result("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    result("setns", syscall(SYS_setns, 0, 0));
    result("ptrace", syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, 2, 0, 0));
    result("bpf", syscall(SYS_bpf, 0, 0, 0));
    result("keyctl", syscall(SYS_keyctl, 0, 0, 0));
    result("add_key", syscall(SYS_add_key, "user", "k", "v", 1, 0));
    result("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    result("init_module", syscall(SYS_init_module, 0, 0, ""));
    result("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
    result("chroot", syscall(SYS_chroot, "/tmp"));
    result("io_uring_setup", syscall(425, 1, 0));
    result("clone3", syscall(435, 0, 0));
    result("setuid0", syscall(SYS_setuid, 0));
    result("raw_socket", syscall(SYS_socket, AF_INET, SOCK_RAW, 1));
    result("packet_socket", syscall(SYS_socket, AF_PACKET, SOCK_RAW, htons(ETH_P_ALL)));
    result("packet_high_bits", syscall(SYS_socket, (long)AF_PACKET | (1L << 32), SOCK_RAW, 0));
    result("vsock", syscall(SYS_socket, 40, SOCK_STREAM, 0));
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in any = {0};
    any.sin_family = AF_INET;
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener, (struct sockaddr *)&any, sizeof any);
    result("listen", listen(listener, 1));
    close(listener);
    result("open_shadow", open("/etc/shadow", O_RDONLY));
    int port = 0;
    const char *p = strstr(event, "\"port\":");
    if (p) port = atoi(p + 7);
    result("connect_daemon", connect_to(port));
    const char *state = strstr(event, "\"state\": \"");
    char path[512] = "/nonexistent";
    if (state) {
        state += 10;
        size_t len = strcspn(state, "\"");
        memcpy(path, state, len);
        path[len] = 0;
        strcat(path, "/admin.token");
    }
    result("open_token", open(path, O_RDONLY));
    result("write_code", open("/opt/function/code/bootstrap", O_WRONLY));
    result("create_in_code", open("/opt/function/code/new", O_WRONLY | O_CREAT, 0644));
    result("write_etc", open("/etc/x", O_WRONLY | O_CREAT, 0644));
    int tmp = open("/tmp/ok", O_WRONLY | O_CREAT, 0644);
    result("write_tmp", tmp);
    if (tmp >= 0) close(tmp);
    result("kill_pid1", kill(1, 9));
    add("\"uid\": %d, \"ppid\": %d, \"pids\": [", getuid(), getppid());
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    int first = 1;
    while ((entry = readdir(proc)) != NULL) {
        if (entry->d_name[0] >= '0' && entry->d_name[0] <= '9') {
            add("%s%s", first ? "" : ", ", entry->d_name);
            first = 0;
        }
    }
    closedir(proc);
    add("], \"fds\": [");
    DIR *fds = opendir("/proc/self/fd");
    first = 1;
    while ((entry = readdir(fds)) != NULL) {
        if (entry->d_name[0] != '.') {
            add("%s%s", first ? "" : ", ", entry->d_name);
            first = 0;
        }
    }
    closedir(fds);
    add("], \"status\": \"");
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    while (fgets(line, sizeof line, status)) {
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10) || !strncmp(line, "Seccomp:", 8)) {
            line[strcspn(line, "\n")] = 0;
            for (char *c = line; *c; c++) if (*c == '\t') *c = ' ';
            add("%s;", line);
        }
    }
    fclose(status);
    add("\"}");
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
        char event[4096];
        strncpy(event, strstr(answer, "\r\n\r\n") + 4, sizeof event - 1);
        event[sizeof event - 1] = 0;
        attack(event);
        static char request[70000];
        int rlen = snprintf(request, sizeof request,
            "POST /v1/runtime/invocation/response/%s HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
            "Content-Length: %zu\r\n\r\n%s", rid, used, out);
        free(answer);
        free(exchange(request, rlen, &n));
    }
}
"""
)

EPERM, ENOENT, EACCES, EROFS, ENOSYS, ECONNREFUSED = 1, 2, 13, 30, 38, 111


@pytest.fixture(scope="module")
def report(api: Api) -> dict:
    name = deploy(api, "Custom", {"bootstrap": compile_c(ATTACKER)})
    event = {"port": api.daemon.port, "state": str(api.daemon.state_dir)}
    response = api.invoke(name, event)
    assert response.status_code == 200, response.text
    assert response.headers["X-Is-Func-Err"] == "false", response.text
    return response.json()


@pytest.mark.parametrize(
    "call",
    [
        "mount",
        "unshare",
        "setns",
        "ptrace",
        "bpf",
        "keyctl",
        "add_key",
        "perf_event_open",
        "init_module",
        "pivot_root",
        "chroot",
        "setuid0",
        "raw_socket",
        "packet_socket",
        "packet_high_bits",
        "vsock",
        "listen",
    ],
)
def test_denied_system_calls_fail_with_eperm(report: dict, call: str) -> None:
    assert report[call] == EPERM, (call, report[call])


def test_io_uring_and_clone3_fail_with_enosys(report: dict) -> None:
    assert report["io_uring_setup"] == ENOSYS and report["clone3"] == ENOSYS


def test_host_files_and_the_daemon_are_out_of_reach(report: dict) -> None:
    assert report["open_shadow"] == ENOENT
    assert report["open_token"] == ENOENT
    assert report["connect_daemon"] == ECONNREFUSED


def test_only_tmp_is_writable(report: dict) -> None:
    assert report["write_code"] in (EACCES, EROFS)
    assert report["create_in_code"] in (EACCES, EROFS)
    assert report["write_etc"] in (EACCES, EROFS)
    assert report["write_tmp"] == 0


def test_unprivileged_contained_and_alone(report: dict) -> None:
    assert report["uid"] != 0
    status = dict(item.split(": ", 1) for item in report["status"].strip(";").split(";"))
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[name].strip() == "0000000000000000", status
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    # The sandbox's reaper, the agent, the bootstrap (its parent): nothing of the host.
    assert report["ppid"] == 2
    pids = sorted(report["pids"])
    assert len(pids) == 3 and pids[:2] == [1, 2] and pids[2] < 100, pids
    assert report["kill_pid1"] == EPERM
    # Nothing inherited from the agent (its protocol socket, the API's listener): stdin, the two
    # output pipes, and the directory being listed.
    assert sorted(report["fds"]) == [0, 1, 2, 3]


def test_daemon_goes_on_serving(api: Api, report: dict) -> None:
    other = api.deploy("def handler(e, c):\n    return 'still serving'\n")["func_name"]
    assert api.invoke(other).content == b"still serving"
    assert json.dumps(report)
