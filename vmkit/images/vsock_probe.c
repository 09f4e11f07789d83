/*
 * vsock_probe: a small static program in vmkit's Linux initramfs for vsock checks. It makes its
 * system calls itself (no libc linked: the initramfs stays small, and unpacking it is emulated
 * kernel work on PVM hosts).
 *
 *   vsock_probe connect PORT TEXT   connect to the host (CID 2) port PORT, send TEXT and a newline,
 *                                   shut the sending side, print what comes back until EOF
 *   vsock_probe echo PORT COUNT     listen on PORT, echo COUNT connections one after another (each
 *                                   until its peer shuts its sending side), print the bytes echoed
 *
 * Exit status 0, or 1 with a message naming the call that failed and its errno.
 */
#include <linux/vm_sockets.h>

#define SYS_read 0
#define SYS_write 1
#define SYS_close 3
#define SYS_socket 41
#define SYS_connect 42
#define SYS_accept 43
#define SYS_shutdown 48
#define SYS_bind 49
#define SYS_listen 50
#define SYS_exit_group 231
#define SHUT_WR_ 1

static long sys(long n, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static unsigned long length_of(const char *s) {
    unsigned long n = 0;
    while (s[n]) n++;
    return n;
}

static long write_all(long fd, const char *data, unsigned long length) {
    while (length) {
        long n = sys(SYS_write, fd, (long)data, (long)length);
        if (n <= 0) return n ? n : -1;
        data += n;
        length -= (unsigned long)n;
    }
    return 0;
}

static void print(const char *s) { write_all(1, s, length_of(s)); }

static void print_number(unsigned long value) {
    char digits[24];
    int at = 23;
    digits[at] = 0;
    do digits[--at] = (char)('0' + value % 10); while (value /= 10);
    print(digits + at);
}

static unsigned long number(const char *s) {
    unsigned long value = 0;
    while (*s >= '0' && *s <= '9') value = value * 10 + (unsigned long)(*s++ - '0');
    return value;
}

static int fail(const char *what, long error) {
    print("vsock_probe: ");
    print(what);
    print(" failed: errno ");
    print_number((unsigned long)-error);
    print("\n");
    return 1;
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static char buffer[65536];

static int do_connect(unsigned port, const char *text) {
    long fd = sys(SYS_socket, AF_VSOCK, 1 /* SOCK_STREAM */, 0);
    if (fd < 0) return fail("socket", fd);
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port };
    long r = sys(SYS_connect, fd, (long)&addr, sizeof(addr));
    if (r < 0) return fail("connect", r);
    if ((r = write_all(fd, text, length_of(text))) < 0 || (r = write_all(fd, "\n", 1)) < 0) return fail("write", r);
    sys(SYS_shutdown, fd, SHUT_WR_, 0);
    while ((r = sys(SYS_read, fd, (long)buffer, sizeof(buffer))) > 0) write_all(1, buffer, (unsigned long)r);
    sys(SYS_close, fd, 0, 0);
    return r < 0 ? fail("read", r) : 0;
}

static int do_echo(unsigned port, unsigned long count) {
    long server = sys(SYS_socket, AF_VSOCK, 1, 0);
    if (server < 0) return fail("socket", server);
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
    long r = sys(SYS_bind, server, (long)&addr, sizeof(addr));
    if (r < 0) return fail("bind", r);
    if ((r = sys(SYS_listen, server, 4, 0)) < 0) return fail("listen", r);
    print("vsock_probe: listening on ");
    print_number(port);
    print("\n");
    for (unsigned long i = 0; i < count; i++) {
        long fd = sys(SYS_accept, server, 0, 0);
        if (fd < 0) return fail("accept", fd);
        unsigned long total = 0;
        long got, wrote;
        while ((got = sys(SYS_read, fd, (long)buffer, sizeof(buffer))) > 0) {
            if ((wrote = write_all(fd, buffer, (unsigned long)got)) < 0) return fail("write", wrote);
            total += (unsigned long)got;
        }
        if (got < 0) return fail("read", got);
        sys(SYS_close, fd, 0, 0);
        print("vsock_probe: echoed ");
        print_number(total);
        print(" bytes\n");
    }
    sys(SYS_close, server, 0, 0);
    return 0;
}

static int run(long argc, char **argv) {
    if (argc == 4 && same(argv[1], "connect")) return do_connect((unsigned)number(argv[2]), argv[3]);
    if (argc == 4 && same(argv[1], "echo")) return do_echo((unsigned)number(argv[2]), number(argv[3]));
    print("usage: vsock_probe connect PORT TEXT | echo PORT COUNT\n");
    return 1;
}

void start(long *stack) {
    sys(SYS_exit_group, run(stack[0], (char **)(stack + 1)), 0, 0);
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start\n\thlt\n");
