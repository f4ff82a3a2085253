/* fgd-pid1: PID 1 of an instance's sandbox (issue 15).
 *
 * The zygote forks an instance as PID 1 of a new pid namespace; that Python process builds
 * the sandbox, forks the worker (PID 2, the warm process that will run the function), closes
 * every descriptor and execs this program by descriptor (sandbox/reaper.py run_pid1),
 * so an idle instance's PID 1 costs a few pages instead of a forked interpreter. Children
 * survive the exec, so the worker is still ours.
 *
 *   fgd-pid1 WORKER_PID
 *
 * It reaps every process that ends up as its child (orphans are reparented to PID 1) and,
 * when WORKER_PID exits, exits "like" it: the same exit code, or 128 + n when it died of
 * signal n (PID 1 cannot die of a signal it sends itself). The zygote reaps PID 1 and turns
 * 128 + n back into the signal (sandbox/reaper.py decode_pid1_exit). When PID 1 exits, the
 * kernel kills whatever else is left in the namespace.
 *
 * It runs beside the function's processes, so it trusts nothing it inherits:
 * - no descriptor stays open (not stdio, not the protocol socket): it reads and writes nothing;
 * - every signal is set to its default action and unblocked; with no handler installed, the
 *   kernel drops every signal sent to a namespace's PID 1 from inside the namespace (SIGKILL
 *   included) and lets only SIGKILL and SIGSTOP through from outside (the zygote, the daemon);
 * - not dumpable: /proc/1/{mem,maps,environ,exe...} are root's and ptrace is refused even to
 *   a process of the same uid (the function runs as another uid anyway, without capabilities);
 * - the argument is a plain decimal pid in range, or it exits with EXIT_MISUSE at once;
 * - it has no capabilities after the exec (the bounding and inheritable sets were emptied
 *   before), so what it could do if subverted is what an unprivileged process could.
 * Misuse (a bad argument, WORKER_PID not its child) exits with EXIT_MISUSE, which ends the
 * instance as a failure the daemon reports like any other exit status.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SIGNAL_BASE 128
#define EXIT_MISUSE 125
/* The kernel's PID_MAX_LIMIT on 64-bit: no pid is larger. */
#define PID_LIMIT 4194304L

static void close_every_descriptor(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 0U, ~0U, 0U) == 0)
        return;
#endif
    /* Kernels before 5.9: every descriptor below the limit. */
    struct rlimit limit;
    long highest = 65536;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < (1UL << 20))
        highest = (long)limit.rlim_cur;
    for (long fd = 0; fd < highest; fd++)
        close((int)fd);
}

/* The kernel's struct sigaction for rt_sigaction(2). With SIG_DFL, no flags and an empty mask,
 * every field after the handler is zero, so the layouts with and without sa_restorer agree. */
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

static void default_signals(void) {
    /* Through the system call, not libc's sigaction: libc refuses the signals it keeps for
     * itself (32 and 33), and an ignored disposition of those survives the exec from whatever
     * started the daemon. SIGCHLD above all must be SIG_DFL: ignored, the kernel would reap the
     * worker before we saw its status. */
    struct kernel_sigaction dfl = {SIG_DFL, 0, NULL, 0};
    for (int sig = 1; sig <= 64; sig++)
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask); /* EINVAL for SIGKILL, SIGSTOP: fine */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* A decimal pid without sign, spaces or leading zeros, 1..PID_LIMIT; -1 otherwise. */
static pid_t parse_pid(const char *text) {
    long value = 0;
    if (text == NULL || *text < '1' || *text > '9')
        return -1;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        value = value * 10 + (*p - '0');
        if (value > PID_LIMIT)
            return -1;
    }
    return (pid_t)value;
}

int main(int argc, char **argv) {
    close_every_descriptor();
    default_signals();
    prctl(PR_SET_NAME, "fgd-pid1", 0, 0, 0);
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* As before the exec: if the zygote dies, so does the instance. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (argc != 2)
        _exit(EXIT_MISUSE);
    pid_t worker = parse_pid(argv[1]);
    if (worker < 0)
        _exit(EXIT_MISUSE);
    /* Outside a pid namespace (a test), orphans come to us only as a subreaper. */
    if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        _exit(EXIT_MISUSE);
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, __WALL);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            /* ECHILD: no child left, so the worker was never ours. */
            _exit(EXIT_MISUSE);
        }
        if (pid != worker)
            continue;
        if (WIFEXITED(status))
            _exit(WEXITSTATUS(status));
        if (WIFSIGNALED(status))
            _exit(SIGNAL_BASE + WTERMSIG(status));
    }
}
