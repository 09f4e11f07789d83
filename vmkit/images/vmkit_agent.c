/*
 * vmkit-agent: the guest exec agent in vmkit's Linux initramfs (docs/agent.md). Init starts it in
 * the background when the VM has a virtio-vsock device; it listens on vsock port AGENT_PORT and
 * serves one request per connection, each connection in a process of its own:
 *
 *   PING        answered with PONG
 *   EXEC        run a command (exact argv, environment, working directory, optional stdin pipe),
 *               stream its stdout and stderr back as they come, then its exit status or signal
 *   WRITE_FILE  create or replace a regular file with a mode from DATA frames (copy in)
 *   READ_FILE   send a regular file back as DATA frames (copy out)
 *
 * Every frame is a 1-byte type, a 4-byte big-endian payload length (at most MAX_PAYLOAD) and the
 * payload. A frame that breaks the protocol closes the connection (and kills a command it ran).
 * It makes its system calls itself (no libc linked): a few KiB in an initramfs whose unpacking
 * is emulated kernel work on PVM hosts.
 *
 *   vmkit-agent                 listen on vsock port AGENT_PORT
 *   vmkit-agent --serve-stdin   serve the one connection on fd 0 (a host-side test harness)
 */
#include <linux/vm_sockets.h>

#define AGENT_PORT 52
#define MAX_PAYLOAD (1u << 20)
#define MAX_ITEMS 65536            /* arguments, and environment entries, per EXEC */
#define MAX_PATH 4096
#define CHUNK 65536                /* stdout, stderr and file data per frame sent */

/* Frame types (vmkit/agent/protocol.py has the same table). */
#define FRAME_PING 'P'
#define FRAME_EXEC 'E'
#define FRAME_WRITE_FILE 'W'
#define FRAME_READ_FILE 'R'
#define FRAME_STDIN 'I'
#define FRAME_STDIN_CLOSE 'C'
#define FRAME_SIGNAL 'K'
#define FRAME_DATA 'D'
#define FRAME_END 'Z'
#define FRAME_PONG 'p'
#define FRAME_STARTED 's'
#define FRAME_STDOUT 'o'
#define FRAME_STDERR 'e'
#define FRAME_EXIT 'x'
#define FRAME_ERROR 'f'
#define FRAME_READY 'k'
#define FRAME_DONE 'd'
#define FRAME_INFO 'i'

#define EXEC_STDIN_PIPE 1u
#define EXEC_REPLACE_ENV 2u
#define EXIT_CODE 0
#define EXIT_SIGNAL 1
#define AGENT_VERSION "vmkit-agent 1"

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_fstat 5
#define SYS_poll 7
#define SYS_rt_sigaction 13
#define SYS_writev 20
#define SYS_dup2 33
#define SYS_nanosleep 35
#define SYS_socket 41
#define SYS_bind 49
#define SYS_listen 50
#define SYS_fork 57
#define SYS_execve 59
#define SYS_exit 60
#define SYS_wait4 61
#define SYS_kill 62
#define SYS_fcntl 72
#define SYS_ftruncate 77
#define SYS_chdir 80
#define SYS_fchmod 91
#define SYS_setsid 112
#define SYS_exit_group 231
#define SYS_openat 257
#define SYS_newfstatat 262
#define SYS_accept4 288
#define SYS_pipe2 293
#define SYS_pidfd_open 434

#define AT_FDCWD_ (-100)
#define O_RDONLY_ 0
#define O_WRONLY_ 01
#define O_RDWR_ 02
#define O_CREAT_ 0100
#define O_NOCTTY_ 0400
#define O_NONBLOCK_ 04000
#define O_CLOEXEC_ 02000000
#define F_GETFL_ 3
#define F_SETFL_ 4
#define F_DUPFD_CLOEXEC_ 1030
#define S_IFMT_ 0170000
#define S_IFREG_ 0100000
#define S_IFDIR_ 0040000
#define POLLIN_ 1
#define POLLOUT_ 4
#define POLLERR_ 8
#define POLLHUP_ 16
#define SIGKILL_ 9
#define SIGPIPE_ 13
#define SIGCHLD_ 17
#define WNOHANG_ 1
#define EINTR_ 4
#define EAGAIN_ 11
#define EACCES_ 13
#define EINVAL_ 22
#define EISDIR_ 21
#define ENOENT_ 2
#define ENOTDIR_ 20
#define EPIPE_ 32
#define ENAMETOOLONG_ 36
#define EMFILE_ 24
#define EIO_ 5

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long u64;

struct kstat {                      /* struct stat on x86-64 */
    u64 dev, ino, nlink;
    u32 mode, uid, gid, pad0;
    u64 rdev;
    long size, blksize, blocks;
    u64 times[6];
    long reserved[3];
};
struct pollfd_ { int fd; short events, revents; };
struct iovec_ { const void *base; u64 length; };
struct sigaction_ { u64 handler, flags, restorer, mask; };
struct timespec_ { long sec, nsec; };

static long sys6(long n, long a, long b, long c, long d, long e, long f) {
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define sys(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) sys6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

void *memset(void *dst, int value, u64 n) {
    volatile u8 *d = dst;
    while (n--) *d++ = (u8)value;
    return dst;
}

void *memcpy(void *dst, const void *src, u64 n) {
    volatile u8 *d = dst;
    const u8 *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

static u64 length_of(const char *s) {
    u64 n = 0;
    while (s[n]) n++;
    return n;
}

static __attribute__((noreturn)) void leave(int status) {
    for (;;) sys(SYS_exit_group, status, 0, 0);
}

static void put_be32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }
static u32 get_be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

static void put_be64(u8 *p, u64 v) { put_be32(p, (u32)(v >> 32)); put_be32(p + 4, (u32)v); }

static void say(const char *text) {
    sys(SYS_write, 2, text, length_of(text));
}

/* ---- frames ---- */

static u8 request[MAX_PAYLOAD];     /* the connection's first frame */
static u8 incoming[MAX_PAYLOAD];    /* later frames from the host */
static u8 chunk[CHUNK];

static int read_exact(int fd, u8 *into, u64 length) {   /* 0: done, 1: EOF before any byte, -1: failed */
    u64 got = 0;
    while (got < length) {
        long n = sys(SYS_read, fd, into + got, length - got);
        if (n == -EINTR_) continue;
        if (n <= 0) return (n == 0 && got == 0) ? 1 : -1;
        got += (u64)n;
    }
    return 0;
}

/* Read one frame into `into`; 0 on success, nonzero on EOF, errors and lengths over MAX_PAYLOAD. */
static int read_frame(int fd, u8 *type, u8 *into, u32 *length) {
    u8 header[5];
    if (read_exact(fd, header, 5)) return -1;
    *type = header[0];
    *length = get_be32(header + 1);
    if (*length > MAX_PAYLOAD) return -1;
    return read_exact(fd, into, *length) ? -1 : 0;
}

static int send_frame(int fd, u8 type, const void *payload, u32 length) {
    u8 header[5];
    header[0] = type;
    put_be32(header + 1, length);
    struct iovec_ parts[2] = { { header, 5 }, { payload, length } };
    u64 total = 5 + (u64)length;
    int index = 0;
    while (total) {
        long n = sys(SYS_writev, fd, parts + index, 2 - index);
        if (n == -EINTR_) continue;
        if (n <= 0) return -1;
        total -= (u64)n;
        while (index < 2 && (u64)n >= parts[index].length) n -= (long)parts[index++].length;
        if (index < 2) {
            parts[index].base = (const u8 *)parts[index].base + n;
            parts[index].length -= (u64)n;
        }
    }
    return 0;
}

/* An ERROR frame: the errno (positive) and "WHAT SUBJECT" as the message. */
static int send_error(int fd, long error, const char *what, const char *subject) {
    static u8 message[4 + 256 + MAX_PATH];
    u64 at = 4, n = length_of(what), m = subject ? length_of(subject) : 0;
    put_be32(message, (u32)(error < 0 ? -error : error));
    memcpy(message + at, what, n);
    at += n;
    if (m) {
        if (m > MAX_PATH) m = MAX_PATH;
        message[at++] = ' ';
        memcpy(message + at, subject, m);
        at += m;
    }
    return send_frame(fd, FRAME_ERROR, message, (u32)at);
}

/* ---- EXEC ---- */

static char strings[2 * MAX_PAYLOAD];
static char *argv_list[MAX_ITEMS + 1];
static char *env_list[MAX_ITEMS + 4];
static char *const base_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
};
#define BASE_ENV_COUNT 2

struct cursor { const u8 *at; u32 left; char *out; };

static int take_u32(struct cursor *c, u32 *value) {
    if (c->left < 4) return -1;
    *value = get_be32(c->at);
    c->at += 4;
    c->left -= 4;
    return 0;
}

/* A length-prefixed string, copied NUL-terminated into `strings`; no NUL may be inside. */
static int take_string(struct cursor *c, char **value) {
    u32 length;
    if (take_u32(c, &length) || length > c->left) return -1;
    for (u32 i = 0; i < length; i++) if (!c->at[i]) return -1;
    memcpy(c->out, c->at, length);
    c->out[length] = 0;
    *value = c->out;
    c->out += length + 1;
    c->at += length;
    c->left -= length;
    return 0;
}

static int same_name(const char *a, const char *b) {     /* "NAME=..." entries with equal names */
    while (*a && *a != '=' && *a == *b) a++, b++;
    return *a == '=' && *b == '=';
}

struct exec_request { u32 flags; char **argv; char **envp; char *cwd; };

static int parse_exec(const u8 *payload, u32 length, struct exec_request *out) {
    struct cursor c = { payload, length, strings };
    u32 argc, envc, env_at = 0;
    if (take_u32(&c, &out->flags) || (out->flags & ~(EXEC_STDIN_PIPE | EXEC_REPLACE_ENV))) return -1;
    if (take_u32(&c, &argc) || argc == 0 || argc > MAX_ITEMS) return -1;
    for (u32 i = 0; i < argc; i++) if (take_string(&c, &argv_list[i])) return -1;
    argv_list[argc] = 0;
    if (!(out->flags & EXEC_REPLACE_ENV)) for (int i = 0; i < BASE_ENV_COUNT; i++) env_list[env_at++] = base_env[i];
    u32 inherited = env_at;
    if (take_u32(&c, &envc) || envc > MAX_ITEMS) return -1;
    for (u32 i = 0; i < envc; i++) {
        char *entry;
        if (take_string(&c, &entry) || entry[0] == '=') return -1;
        char *eq = entry;
        while (*eq && *eq != '=') eq++;
        if (!*eq) return -1;
        u32 slot = env_at;
        for (u32 j = 0; j < inherited; j++) if (env_list[j] && same_name(env_list[j], entry)) slot = j;
        env_list[slot] = entry;
        if (slot == env_at) env_at++;
    }
    env_list[env_at] = 0;
    if (take_string(&c, &out->cwd) || c.left) return -1;
    if (!out->cwd[0]) out->cwd = 0;
    out->argv = argv_list;
    out->envp = env_list;
    return 0;
}

static char exec_path[MAX_PATH + 256];

/* execve(argv[0]) directly when it names a path, else each PATH directory in turn (from the
 * command's own environment). Returns the errno that stopped it. */
static long exec_command(char **argv, char **envp) {
    const char *file = argv[0];
    for (const char *p = file; *p; p++) if (*p == '/') return sys(SYS_execve, file, argv, envp);
    if (!file[0]) return -ENOENT_;
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char **e = envp; *e; e++) {
        const char *s = *e;
        if (s[0] == 'P' && s[1] == 'A' && s[2] == 'T' && s[3] == 'H' && s[4] == '=') path = s + 5;
    }
    u64 file_length = length_of(file);
    if (file_length > 255) return -ENAMETOOLONG_;
    long result = -ENOENT_;
    int denied = 0;
    for (const char *dir = path;; ) {
        const char *end = dir;
        while (*end && *end != ':') end++;
        u64 dir_length = (u64)(end - dir);
        if (dir_length <= MAX_PATH) {
            u64 at = 0;
            if (dir_length) {
                memcpy(exec_path, dir, dir_length);
                at = dir_length;
                exec_path[at++] = '/';
            }
            memcpy(exec_path + at, file, file_length + 1);
            result = sys(SYS_execve, exec_path, argv, envp);
            if (result == -EACCES_) denied = 1;
            else if (result != -ENOENT_ && result != -ENOTDIR_) return result;
        }
        if (!*end) break;
        dir = end + 1;
    }
    return denied ? -EACCES_ : result;
}

static void set_default(int signal) {
    struct sigaction_ action = { 0, 0, 0, 0 };
    sys4(SYS_rt_sigaction, signal, &action, 0, 8);
}

static void ignore(int signal) {
    struct sigaction_ action = { 1 /* SIG_IGN */, 0, 0, 0 };
    sys4(SYS_rt_sigaction, signal, &action, 0, 8);
}

static void set_nonblocking(int fd) {
    long flags = sys(SYS_fcntl, fd, F_GETFL_, 0);
    if (flags >= 0) sys(SYS_fcntl, fd, F_SETFL_, flags | O_NONBLOCK_);
}

/* The command's process: its own session, pipes on 0/1/2, its directory, then execve. What
 * fails is written to `report` (CLOEXEC: EOF there means execve succeeded). */
static __attribute__((noreturn)) void become_command(struct exec_request *req, int in_fd, int out_fd, int err_fd,
                                                     int report) {
    u8 failure[8];
    long r = 0;
    u32 stage = 0;
    sys(SYS_setsid, 0, 0, 0);
    set_default(SIGPIPE_);
    set_default(SIGCHLD_);
    if (in_fd < 0) in_fd = (int)sys4(SYS_openat, AT_FDCWD_, "/dev/null", O_RDWR_ | O_CLOEXEC_, 0);
    if (in_fd < 0) r = in_fd;
    else if ((r = sys(SYS_dup2, in_fd, 0, 0)) >= 0 && (r = sys(SYS_dup2, out_fd, 1, 0)) >= 0)
        r = sys(SYS_dup2, err_fd, 2, 0);
    if (r >= 0 && req->cwd) {
        stage = 1;
        r = sys(SYS_chdir, req->cwd, 0, 0);
    }
    if (r >= 0) {
        stage = 2;
        r = exec_command(req->argv, req->envp);
    }
    put_be32(failure, stage);
    put_be32(failure + 4, (u32)-r);
    sys(SYS_write, report, failure, 8);
    for (;;) sys(SYS_exit, 127, 0, 0);
}

static void reap_killed(long pid) {
    sys(SYS_kill, -pid, SIGKILL_, 0);
    sys(SYS_kill, pid, SIGKILL_, 0);
    sys4(SYS_wait4, pid, 0, 0, 0);
}

/* Send what a pipe holds as frames of `type`; at most `rounds` reads. Returns 1 at EOF. */
static int forward(int conn, int *pipe_fd, u8 type, int rounds, long pid) {
    while (rounds--) {
        long n = sys(SYS_read, *pipe_fd, chunk, CHUNK);
        if (n == -EINTR_) continue;
        if (n == -EAGAIN_) return 0;
        if (n <= 0) {
            sys(SYS_close, *pipe_fd, 0, 0);
            *pipe_fd = -1;
            return 1;
        }
        if (send_frame(conn, type, chunk, (u32)n)) {
            reap_killed(pid);
            leave(0);
        }
    }
    return 0;
}

static void serve_exec(int conn, const u8 *payload, u32 length) {
    struct exec_request req;
    if (parse_exec(payload, length, &req)) return;
    int in_pipe[2] = { -1, -1 }, out_pipe[2], err_pipe[2], report[2];
    if ((req.flags & EXEC_STDIN_PIPE) && sys(SYS_pipe2, in_pipe, O_CLOEXEC_, 0) < 0) goto no_pipes;
    if (sys(SYS_pipe2, out_pipe, O_CLOEXEC_, 0) < 0 || sys(SYS_pipe2, err_pipe, O_CLOEXEC_, 0) < 0 ||
        sys(SYS_pipe2, report, O_CLOEXEC_, 0) < 0) goto no_pipes;
    long pid = sys(SYS_fork, 0, 0, 0);
    if (pid < 0) {
        send_error(conn, pid, "fork", 0);
        return;
    }
    if (pid == 0) become_command(&req, in_pipe[0], out_pipe[1], err_pipe[1], report[1]);
    sys(SYS_close, report[1], 0, 0);
    sys(SYS_close, out_pipe[1], 0, 0);
    sys(SYS_close, err_pipe[1], 0, 0);
    if (in_pipe[0] >= 0) sys(SYS_close, in_pipe[0], 0, 0);
    u8 failure[8];
    int failed = read_exact(report[0], failure, 8);
    sys(SYS_close, report[0], 0, 0);
    if (failed == 0) {
        sys4(SYS_wait4, pid, 0, 0, 0);
        u32 stage = get_be32(failure);
        send_error(conn, get_be32(failure + 4), stage == 1 ? "chdir" : stage == 2 ? "exec" : "redirect",
                   stage == 1 ? req.cwd : stage == 2 ? req.argv[0] : 0);
        return;
    }
    u8 started[4];
    put_be32(started, (u32)pid);
    if (send_frame(conn, FRAME_STARTED, started, 4)) {
        reap_killed(pid);
        return;
    }
    int out_fd = out_pipe[0], err_fd = err_pipe[0], in_fd = in_pipe[1];
    set_nonblocking(out_fd);
    set_nonblocking(err_fd);
    if (in_fd >= 0) set_nonblocking(in_fd);
    long pidfd = sys(SYS_pidfd_open, pid, 0, 0);
    const u8 *pending = 0;
    u32 pending_length = 0;
    int stdin_closed = 0, exited = 0, status = 0;
    while (!exited) {
        struct pollfd_ fds[5];
        int count = 0, conn_at = -1, out_at = -1, err_at = -1, in_at = -1, pid_at = -1;
        if (!pending_length) { conn_at = count; fds[count++] = (struct pollfd_){ conn, POLLIN_, 0 }; }
        if (out_fd >= 0) { out_at = count; fds[count++] = (struct pollfd_){ out_fd, POLLIN_, 0 }; }
        if (err_fd >= 0) { err_at = count; fds[count++] = (struct pollfd_){ err_fd, POLLIN_, 0 }; }
        if (pending_length) { in_at = count; fds[count++] = (struct pollfd_){ in_fd, POLLOUT_, 0 }; }
        if (pidfd >= 0) { pid_at = count; fds[count++] = (struct pollfd_){ (int)pidfd, POLLIN_, 0 }; }
        if (pidfd < 0 && out_fd < 0 && err_fd < 0) {          /* no pidfd: the pipes' EOF ends it */
            sys4(SYS_wait4, pid, &status, 0, 0);
            break;
        }
        long ready = sys(SYS_poll, fds, count, -1);
        if (ready == -EINTR_) continue;
        if (ready < 0) { reap_killed(pid); return; }
        if (out_at >= 0 && fds[out_at].revents) forward(conn, &out_fd, FRAME_STDOUT, 1, pid);
        if (err_at >= 0 && fds[err_at].revents) forward(conn, &err_fd, FRAME_STDERR, 1, pid);
        if (in_at >= 0 && fds[in_at].revents) {
            long n = sys(SYS_write, in_fd, pending, pending_length);
            if (n > 0) {
                pending += n;
                pending_length -= (u32)n;
            } else if (n != -EAGAIN_ && n != -EINTR_) {       /* EPIPE: the command closed its stdin */
                pending_length = 0;
                sys(SYS_close, in_fd, 0, 0);
                in_fd = -1;
            }
        }
        if (conn_at >= 0 && fds[conn_at].revents) {
            u8 type;
            u32 n;
            if (read_frame(conn, &type, incoming, &n)) { reap_killed(pid); return; }
            if (type == FRAME_STDIN && (req.flags & EXEC_STDIN_PIPE) && !stdin_closed) {
                if (in_fd >= 0 && n) { pending = incoming; pending_length = n; }
            } else if (type == FRAME_STDIN_CLOSE && n == 0 && (req.flags & EXEC_STDIN_PIPE)) {
                stdin_closed = 1;
                if (in_fd >= 0) { sys(SYS_close, in_fd, 0, 0); in_fd = -1; }
            } else if (type == FRAME_SIGNAL && n == 4 && get_be32(incoming) >= 1 && get_be32(incoming) <= 64) {
                sys(SYS_kill, -pid, get_be32(incoming), 0);
            } else {
                reap_killed(pid);
                return;
            }
        }
        if (pid_at >= 0 && fds[pid_at].revents) {
            sys4(SYS_wait4, pid, &status, 0, 0);
            exited = 1;
        }
    }
    /* What the command wrote before it ended is in the pipes: send it, then the status. */
    if (out_fd >= 0) forward(conn, &out_fd, FRAME_STDOUT, 64, pid);
    if (err_fd >= 0) forward(conn, &err_fd, FRAME_STDERR, 64, pid);
    u8 exit_frame[5];
    int signal = status & 0x7f;
    exit_frame[0] = signal ? EXIT_SIGNAL : EXIT_CODE;
    put_be32(exit_frame + 1, signal ? (u32)signal : (u32)((status >> 8) & 0xff));
    send_frame(conn, FRAME_EXIT, exit_frame, 5);
    return;
no_pipes:
    send_error(conn, EMFILE_, "pipe", 0);
}

/* ---- files ---- */

/* A path payload: 1 .. MAX_PATH bytes, no NUL; copied NUL-terminated into `into`. */
static int take_path(const u8 *payload, u32 length, char *into) {
    if (length == 0 || length > MAX_PATH) return -1;
    for (u32 i = 0; i < length; i++) if (!payload[i]) return -1;
    memcpy(into, payload, length);
    into[length] = 0;
    return 0;
}

/* 0 when `mode` is a regular file's, else the errno to report (EISDIR or EINVAL). */
static int not_regular(u32 mode) {
    if ((mode & S_IFMT_) == S_IFREG_) return 0;
    return (mode & S_IFMT_) == S_IFDIR_ ? EISDIR_ : EINVAL_;
}

static char file_path[MAX_PATH + 1];

static void serve_write_file(int conn, const u8 *payload, u32 length) {
    if (length < 4) return;
    u32 mode = get_be32(payload);
    if (mode & ~07777u || take_path(payload + 4, length - 4, file_path)) return;
    struct kstat st;
    long r = sys4(SYS_newfstatat, AT_FDCWD_, file_path, &st, 0);
    if (r == 0 && not_regular(st.mode)) {
        send_error(conn, not_regular(st.mode), "not a regular file:", file_path);
        return;
    }
    long fd = sys4(SYS_openat, AT_FDCWD_, file_path, O_WRONLY_ | O_CREAT_ | O_NOCTTY_ | O_NONBLOCK_ | O_CLOEXEC_,
                   mode);
    if (fd < 0) { send_error(conn, fd, "open", file_path); return; }
    if ((r = sys(SYS_fstat, fd, &st, 0)) < 0 || (r = -(long)not_regular(st.mode)) < 0 ||
        (r = sys(SYS_ftruncate, fd, 0, 0)) < 0 || (r = sys(SYS_fchmod, fd, mode, 0)) < 0) {
        send_error(conn, r, r == -EISDIR_ || r == -EINVAL_ ? "not a regular file:" : "prepare", file_path);
        sys(SYS_close, fd, 0, 0);
        return;
    }
    if (send_frame(conn, FRAME_READY, 0, 0)) return;
    u64 total = 0;
    long failure = 0;
    for (;;) {
        u8 type;
        u32 n;
        if (read_frame(conn, &type, incoming, &n)) break;       /* the host left: the file stays short */
        if (type == FRAME_END && n == 0) {
            long closed = sys(SYS_close, fd, 0, 0);
            if (!failure && closed < 0) failure = closed;
            if (failure) { send_error(conn, failure, "write", file_path); return; }
            u8 done[8];
            put_be64(done, total);
            send_frame(conn, FRAME_DONE, done, 8);
            return;
        }
        if (type != FRAME_DATA) break;
        for (u32 at = 0; at < n && !failure; ) {       /* after a failure, read on until END */
            long w = sys(SYS_write, fd, incoming + at, n - at);
            if (w == -EINTR_) continue;
            if (w <= 0) { failure = w ? w : -EIO_; break; }
            at += (u32)w;
            total += (u64)w;
        }
    }
    sys(SYS_close, fd, 0, 0);
}

static void serve_read_file(int conn, const u8 *payload, u32 length) {
    if (take_path(payload, length, file_path)) return;
    long fd = sys4(SYS_openat, AT_FDCWD_, file_path, O_RDONLY_ | O_NOCTTY_ | O_NONBLOCK_ | O_CLOEXEC_, 0);
    if (fd < 0) { send_error(conn, fd, "open", file_path); return; }
    struct kstat st;
    long r = sys(SYS_fstat, fd, &st, 0);
    if (r < 0 || not_regular(st.mode)) {
        send_error(conn, r < 0 ? r : not_regular(st.mode), r < 0 ? "stat" : "not a regular file:", file_path);
        sys(SYS_close, fd, 0, 0);
        return;
    }
    u8 info[12];
    put_be64(info, (u64)st.size);
    put_be32(info + 8, st.mode);
    if (send_frame(conn, FRAME_INFO, info, 12)) return;
    for (;;) {
        long n = sys(SYS_read, fd, chunk, CHUNK);
        if (n == -EINTR_) continue;
        if (n < 0) { send_error(conn, n, "read", file_path); break; }
        if (n == 0) { send_frame(conn, FRAME_END, 0, 0); break; }
        if (send_frame(conn, FRAME_DATA, chunk, (u32)n)) break;
    }
    sys(SYS_close, fd, 0, 0);
}

/* ---- connections ---- */

static void serve(int conn) {
    u8 type;
    u32 length;
    if (read_frame(conn, &type, request, &length)) return;
    switch (type) {
    case FRAME_PING:
        if (length == 0) send_frame(conn, FRAME_PONG, AGENT_VERSION, sizeof(AGENT_VERSION) - 1);
        break;
    case FRAME_EXEC: serve_exec(conn, request, length); break;
    case FRAME_WRITE_FILE: serve_write_file(conn, request, length); break;
    case FRAME_READ_FILE: serve_read_file(conn, request, length); break;
    default: break;                                       /* not a request: close */
    }
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static int listen_vsock(void) {
    long fd = sys(SYS_socket, AF_VSOCK, 1 /* SOCK_STREAM */ | O_CLOEXEC_, 0);
    if (fd < 0) { say("vmkit-agent: no vsock socket\n"); return -1; }
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = AGENT_PORT };
    if (sys(SYS_bind, fd, &addr, sizeof(addr)) < 0 || sys(SYS_listen, fd, 64, 0) < 0) {
        say("vmkit-agent: cannot listen on its vsock port\n");
        return -1;
    }
    return (int)fd;
}

static int run(long argc, char **argv) {
    ignore(SIGPIPE_);
    sys(SYS_chdir, "/", 0, 0);
    if (argc == 2 && same(argv[1], "--serve-stdin")) {
        long conn = sys(SYS_fcntl, 0, F_DUPFD_CLOEXEC_, 3);
        long null = sys4(SYS_openat, AT_FDCWD_, "/dev/null", O_RDWR_ | O_CLOEXEC_, 0);
        set_default(SIGCHLD_);
        if (conn < 0 || null < 0) return 1;
        sys(SYS_dup2, null, 0, 0);
        serve((int)conn);
        return 0;
    }
    if (argc != 1) {
        say("usage: vmkit-agent [--serve-stdin]\n");
        return 2;
    }
    sys(SYS_setsid, 0, 0, 0);
    int server = listen_vsock();
    if (server < 0) return 1;
    ignore(SIGCHLD_);                                     /* connection processes reap themselves */
    for (;;) {
        long conn = sys4(SYS_accept4, server, 0, 0, O_CLOEXEC_);
        if (conn < 0) {
            struct timespec_ pause = { 0, 10000000 };     /* out of fds or memory: do not spin */
            if (conn != -EINTR_) sys(SYS_nanosleep, &pause, 0, 0);
            continue;
        }
        long pid = sys(SYS_fork, 0, 0, 0);
        if (pid == 0) {
            sys(SYS_close, server, 0, 0);
            set_default(SIGCHLD_);
            serve((int)conn);
            leave(0);
        }
        sys(SYS_close, conn, 0, 0);
    }
}

void start(long *stack) {
    leave(run(stack[0], (char **)(stack + 1)));
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n\thlt\n");
