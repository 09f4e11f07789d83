/*
 * vmkit-power-button: waits for the ACPI power button and asks init to shut the VM down. It opens
 * /dev/input/event0 to event7 (those that exist), waits in poll() and, on a KEY_POWER press from
 * any of them, sends SIGUSR2 to init (busybox init's power-off signal; vmkit's init shuts down on
 * it). A small static program that makes its own system calls, as busybox acpid would do the same
 * with a 2 MB executable whose start-up is emulated kernel work on PVM hosts. With no input device
 * it exits at once.
 */

#define SYS_read 0
#define SYS_open 2
#define SYS_poll 7
#define SYS_kill 62
#define SYS_exit_group 231
#define O_RDONLY_CLOEXEC 02000000
#define POLLIN 1
#define EV_KEY 1
#define KEY_POWER 116
#define SIGUSR2 12
#define MAX_DEVICES 8

struct pollfd { int fd; short events, revents; };
struct input_event { long seconds, microseconds; unsigned short type, code; int value; };

static long sys(long n, long a, long b, long c) {
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static int run(void) {
    struct pollfd devices[MAX_DEVICES];
    char path[] = "/dev/input/event0";
    int count = 0;
    for (int index = 0; index < MAX_DEVICES; index++) {
        path[sizeof(path) - 2] = (char)('0' + index);
        long fd = sys(SYS_open, (long)path, O_RDONLY_CLOEXEC, 0);
        if (fd < 0) continue;
        devices[count].fd = (int)fd;
        devices[count].events = POLLIN;
        count++;
    }
    if (!count) return 0;
    for (;;) {
        if (sys(SYS_poll, (long)devices, count, -1) < 0) continue;      /* EINTR */
        for (int i = 0; i < count; i++) {
            struct input_event events[16];
            if (!(devices[i].revents & POLLIN)) continue;
            long got = sys(SYS_read, devices[i].fd, (long)events, sizeof(events));
            for (long e = 0; got > 0 && e < got / (long)sizeof(events[0]); e++)
                if (events[e].type == EV_KEY && events[e].code == KEY_POWER && events[e].value == 1)
                    sys(SYS_kill, 1, SIGUSR2, 0);
        }
    }
}

void start(void) {
    sys(SYS_exit_group, run(), 0, 0);
}

__asm__(".globl _start\n_start:\n\tand $-16, %rsp\n\tcall start\n\thlt\n");
