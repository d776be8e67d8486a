/*
 * corral-agent: Corral's in-guest agent. Runs inside a VM (busybox only, no Python), speaks
 * to the host over one virtio-serial byte stream and gives it exec, files and state.
 *
 * Build:  gcc -static -O2 -o corral-agent corral-agent.c
 * Run:    corral-agent --name org.corral.agent   find /dev/vportNpM via /sys (in the VM)
 *         corral-agent --device PATH            a char device / pty to use
 *         corral-agent --fd N                   an inherited fd (socketpair); EOF = exit
 *         corral-agent --listen PATH            serve a unix socket, one host at a time
 *
 * PROTOCOL (the Python side is shared/agent/protocol.py; keep them in step)
 *
 * Handshake/resync: the host sends MAGIC (16 bytes "\xc0\xffCORRAL-AGENT1\n") followed
 * by an 8-byte nonce. The agent, which skips any bytes until it sees MAGIC, drops every
 * session of the previous host (its execs are killed) and answers MAGIC + the same nonce;
 * the host in turn skips stale bytes until it sees MAGIC + its nonce. After that both
 * directions carry frames:
 *
 *     [u32 len][u8 type][u32 channel][len bytes payload]      (big endian, len <= 1 MiB)
 *
 * A frame whose len is too big or type unknown puts the agent back into MAGIC search
 * (MAGIC's first four bytes read as a length are always too big). The host picks a fresh
 * channel id per request; every reply carries it.
 *
 * host -> agent
 *   0x01 EXEC     u32 flags(1=pty) u32 uid u32 gid u16 cols u16 rows u32 argc u32 envc,
 *                 then NUL-terminated strings: cwd, argv[argc], env[envc] ("K=V");
 *                 an empty cwd keeps the agent's, a missing PATH gets the usual default
 *                 -> OK(u32 pid), then STDOUT/STDERR..., EXIT; or ERROR
 *   0x02 STDIN    bytes for the exec's stdin (or pty); empty payload = close stdin
 *   0x03 RESIZE   u16 cols u16 rows
 *   0x04 SIGNAL   u32 signum
 *   0x05 FILE_GET path\0          -> FILE_INFO, DATA..., DATA(empty); or ERROR
 *   0x06 FILE_PUT u32 mode u32 uid u32 gid u8 type(0 file,1 dir,2 symlink) u8 append
 *                 path\0 [target\0]; for a file then DATA frames, DATA(empty) = end
 *                 -> OK or ERROR              (mode/uid/gid 0xffffffff = unset/keep)
 *   0x07 FILE_DEL path\0          -> OK or ERROR
 *   0x08 DATA     chunk of a FILE_PUT
 *   0x09 STATE    -> OK(text: lines "key values...", see do_state)
 *   0x0a PING     payload echoed in OK
 * agent -> host
 *   0x81 STDOUT / 0x82 STDERR  output (a pty's output is STDOUT)
 *   0x83 EXIT     i32 code (128+N if killed by signal N), sent after the output ended
 *   0x84 OK       request-specific payload
 *   0x85 ERROR    u32 code (400/403/404/409/500) + message
 *   0x86 FILE_INFO u32 mode u32 uid u32 gid u8 type u64 size
 *   0x87 DATA     file bytes / directory entries (NUL separated) / symlink target
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <ifaddrs.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "\xc0\xff" "CORRAL-AGENT1\n"
#define MAGIC_LEN 16
#define NONCE_LEN 8
#define HDR 9
#define MAX_PAYLOAD (1u << 20)
#define CHUNK 65536
#define OUT_HIGH (4u << 20)
#define IN_HIGH (4u << 20)
#define MAX_SESS 128
#define UNSET 0xffffffffu

enum { T_EXEC = 1, T_STDIN, T_RESIZE, T_SIGNAL, T_FGET, T_FPUT, T_FDEL, T_DATA, T_STATE,
       T_PING };
enum { A_STDOUT = 0x81, A_STDERR, A_EXIT, A_OK, A_ERROR, A_FINFO, A_DATA };
enum { S_FREE, S_EXEC, S_FGET, S_FPUT };

typedef struct { char *p; size_t off, len, cap; } buf_t;
#define BLEN(b) ((b)->len - (b)->off)
#define BDATA(b) ((b)->p + (b)->off)

typedef struct {
    int kind;
    uint32_t chan;
    pid_t pid;
    int pty, exited, code, in_eof;
    int fd_in, fd_out, fd_err, fd_file;
    long long exit_ms;
    buf_t inq;
} sess_t;

static buf_t in, out;
static sess_t sess[MAX_SESS];
static int port = -1, listen_fd = -1, sig_fd = -1;
static int mode_fd;                 /* --fd: EOF means the host is gone for good */
static int synced;                  /* 0 = searching for MAGIC */
static int connected;               /* a host said hello and has not gone since */
static long long backoff_until;     /* device mode: host disconnected, re-poll later */
static size_t inq_total;

static void logmsg(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("corral-agent: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void buf_add(buf_t *b, const void *d, size_t n) {
    if (b->off && (b->off == b->len || b->off > b->cap / 2)) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { logmsg("out of memory"); exit(1); }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void buf_drop(buf_t *b, size_t n) {
    b->off += n;
    if (b->off >= b->len) b->off = b->len = 0;
}

static void buf_free(buf_t *b) { free(b->p); memset(b, 0, sizeof *b); }

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void send_frame(int type, uint32_t chan, const void *data, size_t n) {
    unsigned char h[HDR];
    put32(h, (uint32_t)n);
    h[4] = (unsigned char)type;
    put32(h + 5, chan);
    buf_add(&out, h, HDR);
    if (n) buf_add(&out, data, n);
}

static void send_u32(int type, uint32_t chan, uint32_t v) {
    unsigned char p[4];
    put32(p, v);
    send_frame(type, chan, p, 4);
}

/* An errno as the HTTP-like code the host turns into its error classes. */
static uint32_t errno_code(int e) {
    switch (e) {
    case ENOENT: return 404;
    case EACCES: case EPERM: case EROFS: return 403;
    case EEXIST: case ENOTEMPTY: case EBUSY: case ETXTBSY: return 409;
    case EISDIR: case ENOTDIR: case EINVAL: case ENAMETOOLONG: case ELOOP: return 400;
    default: return 500;
    }
}

static void send_error(uint32_t chan, uint32_t code, const char *fmt, ...) {
    char msg[1024];
    unsigned char p[4 + sizeof msg];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n >= (int)sizeof msg) n = sizeof msg - 1;
    put32(p, code);
    memcpy(p + 4, msg, n);
    send_frame(A_ERROR, chan, p, 4 + n);
}

static void close_fd(int *fd) { if (*fd >= 0) close(*fd); *fd = -1; }

static void sess_free(sess_t *s) {
    if (s->pty) { if (s->fd_in == s->fd_out) s->fd_in = -1; }
    close_fd(&s->fd_in); close_fd(&s->fd_out); close_fd(&s->fd_err); close_fd(&s->fd_file);
    inq_total -= BLEN(&s->inq);
    buf_free(&s->inq);
    s->kind = S_FREE;
}

static sess_t *sess_find(uint32_t chan, int kind) {
    for (int i = 0; i < MAX_SESS; i++)
        if (sess[i].kind == kind && sess[i].chan == chan) return &sess[i];
    return NULL;
}

static sess_t *sess_new(uint32_t chan, int kind) {
    for (int i = 0; i < MAX_SESS; i++) {
        if (sess[i].kind == S_FREE) {
            sess_t *s = &sess[i];
            memset(s, 0, sizeof *s);
            s->kind = kind; s->chan = chan;
            s->fd_in = s->fd_out = s->fd_err = s->fd_file = -1;
            return s;
        }
    }
    send_error(chan, 409, "too many concurrent requests (limit %d)", MAX_SESS);
    return NULL;
}

/* The host went away (or a new one said hello): its sessions have no reader any more. */
static void drop_sessions(void) {
    for (int i = 0; i < MAX_SESS; i++) {
        sess_t *s = &sess[i];
        if (s->kind == S_EXEC && !s->exited) { kill(-s->pid, SIGKILL); kill(s->pid, SIGKILL); }
        if (s->kind != S_FREE) sess_free(s);
    }
    buf_free(&in);
    buf_free(&out);
    synced = 0;
}

/* ------------------------------------------------------------------ exec */

static void child_fail(int code, const char *what, const char *arg) {
    dprintf(2, "corral-agent: %s %s: %s\n", what, arg, strerror(errno));
    _exit(code);
}

static void do_exec(uint32_t chan, const unsigned char *p, size_t n) {
    if (n < 24) { send_error(chan, 400, "exec: short request"); return; }
    uint32_t flags = get32(p), uid = get32(p + 4), gid = get32(p + 8);
    unsigned cols = p[12] << 8 | p[13], rows = p[14] << 8 | p[15];
    uint32_t argc = get32(p + 16), envc = get32(p + 20);
    if (argc < 1 || argc > 65536 || envc > 65536) {
        send_error(chan, 400, "exec: needs a command (argc=%u envc=%u)", argc, envc);
        return;
    }
    char **strs = calloc(argc + envc + 3, sizeof *strs);
    const char *q = (const char *)p + 24, *end = (const char *)p + n;
    for (uint32_t i = 0; i < 1 + argc + envc; i++) {
        const char *z = memchr(q, 0, end - q);
        if (!z) { free(strs); send_error(chan, 400, "exec: truncated strings"); return; }
        strs[i + (i > argc ? 1 : 0)] = (char *)q;   /* NULL between argv and env */
        q = z + 1;
    }
    char *cwd = strs[0], **argv = strs + 1, **envp = strs + argc + 2;
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, master = -1, slave = -1;
    sess_t *s = sess_new(chan, S_EXEC);
    if (!s) { free(strs); return; }
    if (flags & 1) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) || unlockpt(master) ||
            (slave = open(ptsname(master), O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
            send_error(chan, 500, "exec: cannot allocate a pty: %s", strerror(errno));
            close_fd(&master); sess_free(s); free(strs); return;
        }
        struct winsize ws = {.ws_row = rows ? rows : 24, .ws_col = cols ? cols : 80};
        ioctl(master, TIOCSWINSZ, &ws);
    } else if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) {
        send_error(chan, 500, "exec: pipe: %s", strerror(errno));
        for (int i = 0; i < 2; i++) { close_fd(&pin[i]); close_fd(&pout[i]); close_fd(&perr[i]); }
        sess_free(s); free(strs); return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        umask(022);
        setsid();
        if (master >= 0) {
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
        } else {
            dup2(pin[0], 0); dup2(pout[1], 1); dup2(perr[1], 2);
        }
        if (setgroups(0, NULL) && getuid() == 0) child_fail(126, "setgroups", "");
        if (gid != UNSET && setgid(gid)) child_fail(126, "setgid", "");
        if (uid != UNSET && setuid(uid)) child_fail(126, "setuid", "");
        if (cwd[0] && chdir(cwd)) child_fail(126, "chdir", cwd);
        environ = envp;
        if (!getenv("PATH")) putenv("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        execvp(argv[0], argv);
        child_fail(errno == ENOENT ? 127 : 126, "exec", argv[0]);
    }
    int err = errno;
    free(strs);
    close_fd(&slave); close_fd(&pin[0]); close_fd(&pout[1]); close_fd(&perr[1]);
    if (pid < 0) {
        close_fd(&master); close_fd(&pin[1]); close_fd(&pout[0]); close_fd(&perr[0]);
        sess_free(s);
        send_error(chan, 500, "exec: fork: %s", strerror(err));
        return;
    }
    s->pid = pid;
    if (master >= 0) {
        s->pty = 1;
        s->fd_in = s->fd_out = master;
    } else {
        s->fd_in = pin[1]; s->fd_out = pout[0]; s->fd_err = perr[0];
    }
    if (s->fd_in >= 0) fcntl(s->fd_in, F_SETFL, fcntl(s->fd_in, F_GETFL) | O_NONBLOCK);
    send_u32(A_OK, chan, (uint32_t)pid);
}

static void reap(void) {
    struct signalfd_siginfo si;
    while (read(sig_fd, &si, sizeof si) > 0) {}
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_SESS; i++) {
            sess_t *s = &sess[i];
            if (s->kind == S_EXEC && s->pid == pid && !s->exited) {
                s->exited = 1;
                s->code = WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
                s->exit_ms = now_ms();
            }
        }
    }
}

/* EXIT goes out once the command ended and its output is drained (or after a grace second,
 * in case a background child keeps the pipes open). */
static void finish_execs(void) {
    for (int i = 0; i < MAX_SESS; i++) {
        sess_t *s = &sess[i];
        if (s->kind != S_EXEC || !s->exited) continue;
        if ((s->fd_out >= 0 || s->fd_err >= 0) && now_ms() - s->exit_ms < 1000) continue;
        unsigned char p[4];
        put32(p, (uint32_t)s->code);
        send_frame(A_EXIT, s->chan, p, 4);
        sess_free(s);
    }
}

static void exec_output(sess_t *s, int *fd, int type) {
    char b[CHUNK];
    ssize_t r = read(*fd, b, sizeof b);
    if (r > 0) { send_frame(type, s->chan, b, r); return; }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (s->pty) s->fd_in = -1;          /* same fd as fd_out: closed just below */
    close_fd(fd);                       /* EOF, or EIO from a pty whose slave closed */
}

static void exec_input(sess_t *s) {
    while (BLEN(&s->inq)) {
        ssize_t w = write(s->fd_in, BDATA(&s->inq), BLEN(&s->inq));
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (w <= 0) { inq_total -= BLEN(&s->inq); buf_drop(&s->inq, BLEN(&s->inq)); break; }
        inq_total -= w;
        buf_drop(&s->inq, w);
    }
    if (s->in_eof && !s->pty) close_fd(&s->fd_in);
}

/* ------------------------------------------------------------------ files */

static void do_fget(uint32_t chan, const char *path) {
    struct stat st;
    if (path[0] != '/') { send_error(chan, 400, "path %s is not absolute", path); return; }
    if (lstat(path, &st)) {
        send_error(chan, errno_code(errno), "%s: %s", path, strerror(errno));
        return;
    }
    unsigned char info[21];
    int type = S_ISDIR(st.st_mode) ? 1 : S_ISLNK(st.st_mode) ? 2 : 0;
    if (!type && !S_ISREG(st.st_mode)) {
        send_error(chan, 400, "%s is not a regular file, directory or symlink", path);
        return;
    }
    int fd = -1;
    DIR *d = NULL;
    if (type == 0 && (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        send_error(chan, errno_code(errno), "%s: %s", path, strerror(errno));
        return;
    }
    if (type == 1 && !(d = opendir(path))) {
        send_error(chan, errno_code(errno), "%s: %s", path, strerror(errno));
        return;
    }
    put32(info, st.st_mode & 07777); put32(info + 4, st.st_uid); put32(info + 8, st.st_gid);
    info[12] = type;
    put32(info + 13, (uint64_t)st.st_size >> 32); put32(info + 17, (uint32_t)st.st_size);
    send_frame(A_FINFO, chan, info, sizeof info);
    if (type == 1) {
        struct dirent *e;
        buf_t names = {0};
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            buf_add(&names, e->d_name, strlen(e->d_name) + 1);
        }
        closedir(d);
        for (size_t o = 0; o < names.len; o += CHUNK)
            send_frame(A_DATA, chan, names.p + o, names.len - o > CHUNK ? CHUNK : names.len - o);
        buf_free(&names);
    } else if (type == 2) {
        char t[4096];
        ssize_t n = readlink(path, t, sizeof t);
        if (n > 0) send_frame(A_DATA, chan, t, n);
    } else {
        sess_t *s = sess_new(chan, S_FGET);   /* streamed from the main loop */
        if (s) s->fd_file = fd;
        else close(fd);
        return;
    }
    send_frame(A_DATA, chan, NULL, 0);
}

static void fget_pump(sess_t *s) {
    char b[CHUNK];
    ssize_t r = read(s->fd_file, b, sizeof b);
    if (r > 0) { send_frame(A_DATA, s->chan, b, r); return; }
    send_frame(A_DATA, s->chan, NULL, 0);
    sess_free(s);
}

static void do_fput(uint32_t chan, const unsigned char *p, size_t n) {
    if (n < 15 || !memchr(p + 14, 0, n - 14)) { send_error(chan, 400, "file put: bad request"); return; }
    uint32_t mode = get32(p), uid = get32(p + 4), gid = get32(p + 8);
    int type = p[12], append = p[13];
    const char *path = (const char *)p + 14, *target = path + strlen(path) + 1;
    if (path[0] != '/') { send_error(chan, 400, "path %s is not absolute", path); return; }
    if (mode != UNSET && mode > 07777) { send_error(chan, 400, "bad mode %o", mode); return; }
    if (type == 1) {
        if (mkdir(path, mode == UNSET ? 0755 : mode) && errno != EEXIST) goto fail;
        struct stat st;
        if (lstat(path, &st)) goto fail;
        if (!S_ISDIR(st.st_mode)) { errno = EEXIST; goto fail; }
        if (mode != UNSET && chmod(path, mode)) goto fail;
        if ((uid != UNSET || gid != UNSET) && lchown(path, uid, gid)) goto fail;
        send_frame(A_OK, chan, NULL, 0);
        return;
    }
    if (type == 2) {
        struct stat st;
        if ((const unsigned char *)target >= p + n || !memchr(target, 0, (const char *)p + n - target) || !*target) {
            send_error(chan, 400, "file put: a symlink needs a target");
            return;
        }
        if (!lstat(path, &st) && S_ISLNK(st.st_mode)) unlink(path);
        if (symlink(target, path)) goto fail;
        if ((uid != UNSET || gid != UNSET) && lchown(path, uid, gid)) goto fail;
        send_frame(A_OK, chan, NULL, 0);
        return;
    }
    if (type != 0) { send_error(chan, 400, "file put: unknown type %d", type); return; }
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC),
                  mode == UNSET ? 0644 : mode);
    if (fd < 0) goto fail;
    if ((mode != UNSET && fchmod(fd, mode)) ||
        ((uid != UNSET || gid != UNSET) && fchown(fd, uid, gid))) {
        close(fd);
        goto fail;
    }
    sess_t *s = sess_new(chan, S_FPUT);
    if (!s) { close(fd); return; }
    s->fd_file = fd;
    return;
fail:
    send_error(chan, errno_code(errno), "%s: %s", path, strerror(errno));
}

static void fput_data(uint32_t chan, const unsigned char *p, size_t n) {
    sess_t *s = sess_find(chan, S_FPUT);
    if (!s) return;                     /* already failed and reported */
    if (!n) {
        if (close(s->fd_file)) send_error(chan, 500, "close: %s", strerror(errno));
        else send_frame(A_OK, chan, NULL, 0);
        s->fd_file = -1;
        sess_free(s);
        return;
    }
    while (n) {
        ssize_t w = write(s->fd_file, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            send_error(chan, w < 0 ? errno_code(errno) : 500, "write: %s", strerror(errno));
            sess_free(s);
            return;
        }
        p += w; n -= w;
    }
}

static void do_fdel(uint32_t chan, const char *path) {
    struct stat st;
    if (path[0] != '/') { send_error(chan, 400, "path %s is not absolute", path); return; }
    if (lstat(path, &st) || (S_ISDIR(st.st_mode) ? rmdir(path) : unlink(path))) {
        send_error(chan, errno_code(errno), "%s: %s", path, strerror(errno));
        return;
    }
    send_frame(A_OK, chan, NULL, 0);
}

/* ------------------------------------------------------------------ state */

static int prefix_len(struct sockaddr *m) {
    int bits = 0;
    unsigned char *b = NULL;
    int n = 0;
    if (!m) return 0;
    if (m->sa_family == AF_INET) { b = (unsigned char *)&((struct sockaddr_in *)m)->sin_addr; n = 4; }
    if (m->sa_family == AF_INET6) { b = (unsigned char *)&((struct sockaddr_in6 *)m)->sin6_addr; n = 16; }
    for (int i = 0; i < n; i++) bits += __builtin_popcount(b[i]);
    return bits;
}

/* Text reply, one fact a line:
 *   hostname NAME | uptime SECONDS | memory TOTAL_KIB FREE_KIB AVAILABLE_KIB | processes N
 *   iface NAME up|down MTU HWADDR RX_BYTES RX_PACKETS TX_BYTES TX_PACKETS loopback|broadcast
 *   addr NAME inet|inet6 ADDRESS PREFIX global|link|local                                 */
static void do_state(uint32_t chan) {
    buf_t t = {0};
    char line[512], host[256] = "";
    FILE *f;
    gethostname(host, sizeof host - 1);
    buf_add(&t, line, snprintf(line, sizeof line, "hostname %s\n", host));
    double up = 0;
    if ((f = fopen("/proc/uptime", "re"))) { if (fscanf(f, "%lf", &up) != 1) up = 0; fclose(f); }
    buf_add(&t, line, snprintf(line, sizeof line, "uptime %.2f\n", up));
    unsigned long long total = 0, free_ = 0, avail = 0, v;
    if ((f = fopen("/proc/meminfo", "re"))) {
        char key[64];
        while (fscanf(f, "%63s %llu kB\n", key, &v) == 2) {
            if (!strcmp(key, "MemTotal:")) total = v;
            else if (!strcmp(key, "MemFree:")) free_ = v;
            else if (!strcmp(key, "MemAvailable:")) avail = v;
        }
        fclose(f);
    }
    buf_add(&t, line, snprintf(line, sizeof line, "memory %llu %llu %llu\n", total, free_, avail));
    int procs = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) procs += e->d_name[0] >= '1' && e->d_name[0] <= '9';
    if (d) closedir(d);
    buf_add(&t, line, snprintf(line, sizeof line, "processes %d\n", procs));
    struct ifaddrs *ifs = NULL, *a;
    int sk = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (!getifaddrs(&ifs)) {
        for (a = ifs; a; a = a->ifa_next) {
            if (!a->ifa_addr || a->ifa_addr->sa_family != AF_PACKET) continue;
            struct sockaddr_ll *ll = (struct sockaddr_ll *)a->ifa_addr;
            struct rtnl_link_stats *st = a->ifa_data;
            struct ifreq ifr = {0};
            char hw[64] = "-";
            int mtu = 0;
            snprintf(ifr.ifr_name, IFNAMSIZ, "%s", a->ifa_name);
            if (sk >= 0 && !ioctl(sk, SIOCGIFMTU, &ifr)) mtu = ifr.ifr_mtu;
            if (ll->sll_halen == 6)
                snprintf(hw, sizeof hw, "%02x:%02x:%02x:%02x:%02x:%02x", ll->sll_addr[0],
                         ll->sll_addr[1], ll->sll_addr[2], ll->sll_addr[3], ll->sll_addr[4],
                         ll->sll_addr[5]);
            buf_add(&t, line, snprintf(line, sizeof line, "iface %s %s %d %s %u %u %u %u %s\n",
                    a->ifa_name, a->ifa_flags & IFF_UP ? "up" : "down", mtu, hw,
                    st ? st->rx_bytes : 0, st ? st->rx_packets : 0, st ? st->tx_bytes : 0,
                    st ? st->tx_packets : 0, a->ifa_flags & IFF_LOOPBACK ? "loopback" : "broadcast"));
        }
        for (a = ifs; a; a = a->ifa_next) {
            if (!a->ifa_addr) continue;
            int fam = a->ifa_addr->sa_family;
            char ip[INET6_ADDRSTRLEN];
            const char *scope = "global";
            if (fam == AF_INET) {
                struct in_addr *x = &((struct sockaddr_in *)a->ifa_addr)->sin_addr;
                inet_ntop(fam, x, ip, sizeof ip);
                if ((ntohl(x->s_addr) >> 24) == 127) scope = "local";
                else if ((ntohl(x->s_addr) >> 16) == 0xa9fe) scope = "link";
            } else if (fam == AF_INET6) {
                struct in6_addr *x = &((struct sockaddr_in6 *)a->ifa_addr)->sin6_addr;
                inet_ntop(fam, x, ip, sizeof ip);
                if (IN6_IS_ADDR_LOOPBACK(x)) scope = "local";
                else if (IN6_IS_ADDR_LINKLOCAL(x)) scope = "link";
            } else continue;
            buf_add(&t, line, snprintf(line, sizeof line, "addr %s %s %s %d %s\n", a->ifa_name,
                    fam == AF_INET ? "inet" : "inet6", ip, prefix_len(a->ifa_netmask), scope));
        }
        freeifaddrs(ifs);
    }
    if (sk >= 0) close(sk);
    send_frame(A_OK, chan, t.p, t.len > MAX_PAYLOAD ? MAX_PAYLOAD : t.len);
    buf_free(&t);
}

/* ------------------------------------------------------------------ dispatch */

static void dispatch(int type, uint32_t chan, unsigned char *p, size_t n) {
    sess_t *s;
    if (type == T_FGET || type == T_FDEL) {
        if (!n || p[n - 1]) { send_error(chan, 400, "path must be NUL-terminated"); return; }
    }
    switch (type) {
    case T_EXEC: do_exec(chan, p, n); break;
    case T_STDIN:
        if ((s = sess_find(chan, S_EXEC)) && s->fd_in >= 0) {
            if (!n) s->in_eof = 1;
            buf_add(&s->inq, p, n);
            inq_total += n;
            exec_input(s);
        }
        break;
    case T_RESIZE:
        if ((s = sess_find(chan, S_EXEC)) && s->pty && n >= 4 && s->fd_out >= 0) {
            struct winsize ws = {.ws_row = p[2] << 8 | p[3], .ws_col = p[0] << 8 | p[1]};
            ioctl(s->fd_out, TIOCSWINSZ, &ws);
        }
        break;
    case T_SIGNAL:
        if ((s = sess_find(chan, S_EXEC)) && !s->exited && n >= 4) kill(s->pid, (int)get32(p));
        break;
    case T_FGET: do_fget(chan, (char *)p); break;
    case T_FPUT: do_fput(chan, p, n); break;
    case T_FDEL: do_fdel(chan, (char *)p); break;
    case T_DATA: fput_data(chan, p, n); break;
    case T_STATE: do_state(chan); break;
    case T_PING: send_frame(A_OK, chan, p, n); break;
    }
}

/* Consume what is in `in`: MAGIC search while unsynced, then whole frames. */
static void parse_input(void) {
    for (;;) {
        unsigned char *p = (unsigned char *)BDATA(&in);
        size_t n = BLEN(&in);
        if (!synced) {
            unsigned char *m = memmem(p, n, MAGIC, MAGIC_LEN);
            if (!m) {
                if (n > MAGIC_LEN) buf_drop(&in, n - MAGIC_LEN);
                return;
            }
            if ((size_t)(p + n - m) < MAGIC_LEN + NONCE_LEN) { buf_drop(&in, m - p); return; }
            unsigned char hello[MAGIC_LEN + NONCE_LEN];
            memcpy(hello, m, sizeof hello);
            buf_drop(&in, (m - p) + sizeof hello);
            buf_t keep = in;            /* frames the new host already sent */
            memset(&in, 0, sizeof in);
            drop_sessions();
            in = keep;
            buf_add(&out, hello, sizeof hello);
            if (!connected) logmsg("host connected");
            synced = connected = 1;
            continue;
        }
        if (n < HDR) return;
        uint32_t len = get32(p);
        int type = p[4];
        if (len > MAX_PAYLOAD || type < T_EXEC || type > T_PING) {
            if (memcmp(p, MAGIC, 4))    /* not just a new host saying hello */
                logmsg("bad frame (type %d, len %u): resyncing", type, len);
            synced = 0;                 /* MAGIC search starts right here */
            continue;
        }
        if (n < HDR + len) return;
        unsigned char *payload = malloc(len + 1);
        memcpy(payload, p + HDR, len);
        payload[len] = 0;
        uint32_t chan = get32(p + 5);
        buf_drop(&in, HDR + len);
        dispatch(type, chan, payload, len);
        free(payload);
    }
}

/* ------------------------------------------------------------------ port */

static void host_gone(const char *why) {
    if (connected) logmsg("host disconnected (%s)", why);
    connected = 0;
    drop_sessions();
    if (mode_fd) exit(0);
    if (listen_fd >= 0) close_fd(&port);
    else backoff_until = now_ms() + 250;
}

static void port_read(void) {
    char b[CHUNK];
    ssize_t r = read(port, b, sizeof b);
    if (r > 0) { buf_add(&in, b, r); parse_input(); return; }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    host_gone(r ? strerror(errno) : "end of stream");
}

static void port_write(void) {
    while (BLEN(&out)) {
        ssize_t w = write(port, BDATA(&out), BLEN(&out));
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (w <= 0) { host_gone(strerror(errno)); return; }
        buf_drop(&out, w);
    }
}

static void set_port(int fd) {
    struct termios tio;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (!tcgetattr(fd, &tio)) { cfmakeraw(&tio); tcsetattr(fd, TCSANOW, &tio); }
    port = fd;
}

/* /sys/class/virtio-ports/vportNpM/name holds the name given by the host (no udev here). */
static int find_port(const char *name, char *dev, size_t devlen) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d))) {
        char p[512], v[256] = "";
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
        FILE *f = fopen(p, "re");
        if (!f) continue;
        if (fgets(v, sizeof v, f)) v[strcspn(v, "\n")] = 0;
        fclose(f);
        if (!strcmp(v, name)) { snprintf(dev, devlen, "/dev/%s", e->d_name); found = 1; }
    }
    if (d) closedir(d);
    return found;
}

static int open_listen(const char *path) {
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) { logmsg("socket path too long"); exit(2); }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 4)) {
        logmsg("listen %s: %s", path, strerror(errno));
        exit(1);
    }
    chmod(path, 0600);
    return fd;
}

static void usage(void) {
    fputs("usage: corral-agent --name PORTNAME | --device PATH | --fd N | --listen PATH\n", stderr);
    exit(2);
}

int main(int argc, char **argv) {
    if (argc != 3) usage();
    const char *opt = argv[1], *val = argv[2];
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    umask(0);
    if (!strcmp(opt, "--fd")) { mode_fd = 1; set_port(atoi(val)); }
    else if (!strcmp(opt, "--listen")) listen_fd = open_listen(val);
    else if (!strcmp(opt, "--device") || !strcmp(opt, "--name")) {
        char dev[300];
        int warned = 0;
        snprintf(dev, sizeof dev, "%s", val);
        while (!strcmp(opt, "--name") && !find_port(val, dev, sizeof dev)) {
            if (!warned++) logmsg("waiting for virtio port %s", val);
            sleep(1);
        }
        int fd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) { logmsg("open %s: %s", dev, strerror(errno)); sleep(1); return 1; }
        set_port(fd);
    } else usage();
    logmsg("ready (%s %s)", opt, val);

    for (;;) {
        struct pollfd pf[3 + 3 * MAX_SESS];
        sess_t *who[3 + 3 * MAX_SESS];
        int kinds[3 + 3 * MAX_SESS], np = 0, timeout = -1, pumping = 0;
        long long now = now_ms();
        pf[np] = (struct pollfd){sig_fd, POLLIN, 0}; who[np] = NULL; kinds[np++] = 0;
        if (port < 0 && listen_fd >= 0) {
            pf[np] = (struct pollfd){listen_fd, POLLIN, 0}; who[np] = NULL; kinds[np++] = 1;
        } else if (port >= 0 && now >= backoff_until) {
            short ev = (inq_total < IN_HIGH ? POLLIN : 0) | (BLEN(&out) ? POLLOUT : 0);
            pf[np] = (struct pollfd){port, ev, 0}; who[np] = NULL; kinds[np++] = 2;
        } else if (port >= 0) timeout = (int)(backoff_until - now);
        for (int i = 0; i < MAX_SESS; i++) {
            sess_t *s = &sess[i];
            if (s->kind == S_FGET && BLEN(&out) < OUT_HIGH) pumping = 1;
            if (s->kind != S_EXEC) continue;
            if (s->exited) {
                int left = (int)(s->exit_ms + 1000 - now);
                if (timeout < 0 || left < timeout) timeout = left < 0 ? 0 : left;
            }
            int fds[3] = {s->fd_out, s->fd_err, s->pty ? -1 : s->fd_in};
            for (int k = 0; k < 3; k++) {
                if (fds[k] < 0) continue;
                if (k < 2 && BLEN(&out) >= OUT_HIGH) continue;
                if (k == 2 && !BLEN(&s->inq)) continue;
                pf[np] = (struct pollfd){fds[k], k < 2 ? POLLIN : POLLOUT, 0};
                who[np] = s; kinds[np++] = 10 + k;
            }
            if (s->pty && BLEN(&s->inq) && s->fd_in >= 0) {
                pf[np] = (struct pollfd){s->fd_in, POLLOUT, 0}; who[np] = s; kinds[np++] = 12;
            }
        }
        if (pumping) timeout = 0;
        if (poll(pf, np, timeout) < 0 && errno != EINTR) { logmsg("poll: %s", strerror(errno)); return 1; }
        for (int i = 0; i < np; i++) {
            short re = pf[i].revents;
            sess_t *s = who[i];
            if (!re) continue;
            if (kinds[i] == 0) reap();
            else if (kinds[i] == 1) {
                int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (c >= 0) set_port(c);
            } else if (kinds[i] == 2 && port >= 0) {
                if (re & POLLIN) port_read();
                else if (re & (POLLHUP | POLLERR)) host_gone("hangup");
                if (port >= 0 && (re & POLLOUT) && now_ms() >= backoff_until) port_write();
            } else if (s && s->kind == S_EXEC) {
                if (kinds[i] == 10 && s->fd_out == pf[i].fd) exec_output(s, &s->fd_out, A_STDOUT);
                else if (kinds[i] == 11 && s->fd_err == pf[i].fd) exec_output(s, &s->fd_err, A_STDERR);
                else if (kinds[i] == 12 && s->fd_in == pf[i].fd) exec_input(s);
            }
        }
        for (int i = 0; i < MAX_SESS; i++)
            if (sess[i].kind == S_FGET && BLEN(&out) < OUT_HIGH) fget_pump(&sess[i]);
        finish_execs();
        if (port >= 0 && BLEN(&out) && now_ms() >= backoff_until) port_write();
    }
}
