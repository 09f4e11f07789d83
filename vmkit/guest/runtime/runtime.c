/* vmkit guest runtime: ring-0 set-up, the gate, console, boot-info parsing and SMP start. */
#include "runtime.h"

#define LAPIC_BASE 0xFEE00000UL
#define IOAPIC_BASE 0xFEC00000UL
#define COM1 0x3F8
#define DEBUG_EXIT_PORT 0xF4
#define TRAMPOLINE_ADDR 0x8000

struct frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};

struct idt_entry { u16 off0, sel; u8 ist, flags; u16 off1; u32 off2, zero; } __attribute__((packed));
struct tss { u32 r0; u64 rsp0, rsp1, rsp2, r1, ist[7], r2; u16 r3, iomap; u8 io_bitmap[8192 + 1]; } __attribute__((packed));

extern u8 isr_table[], trampoline_start[], trampoline_end[];
extern u64 gdt_tss[2];
extern u64 boot_info_ptr;
extern u32 boot_protocol;
extern void enter_user(void (*entry)(void), u64 stack);
extern void load_task_register(void);

struct machine_info machine;
volatile u32 cpus_online = 1;
volatile u32 apic_ids[MAX_CPUS];
volatile u64 irq_count[256];
volatile u32 breakpoints;
volatile u32 x87_errors;

static struct idt_entry idt[256];
static struct tss tss;
static u8 kernel_stack[16384] __attribute__((aligned(16)));
static u8 user_stack[65536] __attribute__((aligned(16)));

/* ---------------------------------------------------------------- helpers */
void *memset(void *d, int c, size_t n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, size_t n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, size_t n) {
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p - *q;
    return 0;
}
size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static inline void raw_outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 raw_inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void raw_outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u32 raw_inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void serial_write(const char *buf, u64 len) {
    __asm__ volatile("rep outsb" : "+S"(buf), "+c"(len) : "d"((u16)COM1) : "memory");
}

/*
 * ---------------------------------------------------------------- the ring-0 gate
 * A `ud2` in ring 3 with RAX = operation and RDI/RSI = arguments. The #UD handler
 * recognises it, does the work in ring 0 and resumes after it. (PVM hosts refuse
 * `int n` from ring 3 and do not switch privilege on `syscall`; a fault works everywhere.)
 */
#define UD2 0x0B0F
#define VECTOR_UD 6
#define VECTOR_MF 16
#define FWAIT 0x9B

u64 gate(u64 op, u64 a, u64 b) {
    u64 ret;
    __asm__ volatile("ud2" : "=a"(ret) : "a"(op), "D"(a), "S"(b) : "memory");
    return ret;
}

u64 gate_call(u64 op, u64 a, u64 b) {
    (void)b;
    switch (op) {
    case GATE_WAIT_IRQ:
        /* Let one interrupt in: sti; hlt wakes on it, its handler runs, then mask again. */
        __asm__ volatile("sti; hlt; cli" ::: "memory");
        return 0;
    case GATE_TRIPLE_FAULT: {
        struct { u16 limit; u64 base; } __attribute__((packed)) empty = { 0, 0 };
        __asm__ volatile("lidt %0; int3" :: "m"(empty));
        return 0;
    }
    case GATE_RING0_INT3: __asm__ volatile("int3"); return breakpoints;
    case GATE_ENABLE_SYSCALL: {                     /* a: the LSTAR entry point */
        u32 lo, hi;
        __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xC0000080));
        __asm__ volatile("wrmsr" :: "c"(0xC0000080), "a"(lo | 1), "d"(hi));        /* EFER.SCE */
        __asm__ volatile("wrmsr" :: "c"(0xC0000081), "a"(0), "d"(0x00100008));    /* STAR */
        __asm__ volatile("wrmsr" :: "c"(0xC0000082), "a"((u32)a), "d"((u32)(a >> 32)));
        __asm__ volatile("wrmsr" :: "c"(0xC0000084), "a"(0x700), "d"(0));         /* FMASK */
        return 0;
    }
    case GATE_RING0_FWAIT: {                        /* with x87 errors reported as #MF (CR0.NE) */
        u64 cr0;
        __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
        __asm__ volatile("mov %0, %%cr0" :: "r"(cr0 | 0x20));
        __asm__ volatile("fwait" ::: "memory");
        return x87_errors;
    }
    case GATE_RING0_POPCNT: { u64 r; __asm__ volatile("popcnt %1, %0" : "=r"(r) : "r"(a)); return r; }
    case GATE_WAIT_IRQ_SINCE:                       /* a: vector, b: the count seen before */
        if (irq_count[a & 0xFF] == b) __asm__ volatile("sti; hlt; cli" ::: "memory");
        return 0;
    }
    return (u64)-1;
}

void outb(u16 port, u8 v) { raw_outb(port, v); }
u8 inb(u16 port) { return raw_inb(port); }
void outl(u16 port, u32 v) { raw_outl(port, v); }
u32 inl(u16 port) { return raw_inl(port); }

/* ---------------------------------------------------------------- console */
static char line[256];
static u64 line_len;

/* One `rep outsb` per line: a single exit to the VMM carries the whole line. */
void flush(void) {
    if (!line_len) return;
    serial_write(line, line_len);
    line_len = 0;
}

void putc(char c) {
    line[line_len++] = c;
    if (c == '\n' || line_len == sizeof(line)) flush();
}

void puts(const char *s) { while (*s) putc(*s++); }

static void put_unsigned(u64 v, unsigned base, int width, char pad) {
    char buf[24];
    int n = 0;
    do { buf[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    while (n < width) buf[n++] = pad;
    while (n) putc(buf[--n]);
}

void printf(const char *fmt, ...) {
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') { putc(*fmt); continue; }
        fmt++;
        char pad = ' ';
        int width = 0, is_long = 0;
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { is_long = 1; fmt++; }
        switch (*fmt) {
        case 'd': {
            i64 v = is_long ? __builtin_va_arg(ap, i64) : __builtin_va_arg(ap, int);
            if (v < 0) { putc('-'); v = -v; }
            put_unsigned((u64)v, 10, width, pad);
            break;
        }
        case 'u': put_unsigned(is_long ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 10, width, pad); break;
        case 'x': put_unsigned(is_long ? __builtin_va_arg(ap, u64) : __builtin_va_arg(ap, u32), 16, width, pad); break;
        case 'p': puts("0x"); put_unsigned((u64)__builtin_va_arg(ap, void *), 16, width, pad); break;
        case 's': { const char *s = __builtin_va_arg(ap, const char *); puts(s ? s : "(null)"); break; }
        case 'c': putc((char)__builtin_va_arg(ap, int)); break;
        case '%': putc('%'); break;
        default: putc('%'); putc(*fmt); break;
        }
    }
    __builtin_va_end(ap);
}

void exit(int v) {
    flush();
    for (;;) raw_outb(DEBUG_EXIT_PORT, (u8)v);
}

/* ---------------------------------------------------------------- traps and interrupts */
static void lapic_eoi(void) { mmio_write32(LAPIC_BASE + 0xB0, 0); }

void trap_handler(struct frame *f) {
    if (f->vector == VECTOR_UD && (f->cs & 3) == 3 && *(const u16 *)f->rip == UD2) {
        f->rax = gate_call(f->rax, f->rdi, f->rsi);
        f->rip += 2;
        return;
    }
    if (f->vector >= 32) { irq_count[f->vector]++; lapic_eoi(); return; }
    if (f->vector == 3) { breakpoints++; return; }  /* int3 is a trap: resume after it */
    if (f->vector == VECTOR_MF && (f->cs & 3) == 0 && *(const u8 *)f->rip == FWAIT) {
        x87_errors++;                               /* a fault: step over the fwait that raised it */
        f->rip += 1;
        return;
    }
    line_len = 0;
    printf("\nEXCEPTION vector=%u error=%lx rip=%lx cs=%lx\n", (u32)f->vector, f->error, f->rip, f->cs);
    exit(0x7E);
}

static void set_gate(int vec, u64 handler, int dpl) {
    struct idt_entry *e = &idt[vec];
    e->off0 = (u16)handler;
    e->sel = 0x08;
    e->ist = 0;
    e->flags = (u8)(0x8E | (dpl << 5));  /* present, 64-bit interrupt gate */
    e->off1 = (u16)(handler >> 16);
    e->off2 = (u32)(handler >> 32);
    e->zero = 0;
}

static void setup_tables(void) {
    for (int v = 0; v < 256; v++) set_gate(v, (u64)(isr_table + 16 * v), 0);
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { sizeof(idt) - 1, (u64)idt };
    __asm__ volatile("lidt %0" :: "m"(idtr));
    u64 base = (u64)&tss, limit = sizeof(tss) - 1;
    tss.rsp0 = (u64)(kernel_stack + sizeof(kernel_stack));
    tss.iomap = __builtin_offsetof(struct tss, io_bitmap);
    tss.io_bitmap[8192] = 0xFF;  /* all-zero map: every port allowed from ring 3; 0xff ends it */
    gdt_tss[0] = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (0x89UL << 40) |
                 ((limit & 0xF0000) << 32) | ((base & 0xFF000000) << 32);
    gdt_tss[1] = base >> 32;
    load_task_register();
}

void ioapic_route(int pin, int vector) {
    mmio_write32(IOAPIC_BASE, 0x10 + 2 * pin + 1);
    mmio_write32(IOAPIC_BASE + 0x10, 0);           /* destination: APIC ID 0 */
    mmio_write32(IOAPIC_BASE, 0x10 + 2 * pin);
    mmio_write32(IOAPIC_BASE + 0x10, (u32)vector); /* fixed, physical, edge, active high */
}

int wait_irq(int vector, u64 timeout_cycles) {
    u64 seen = irq_count[vector], deadline = rdtsc() + timeout_cycles;
    while (irq_count[vector] == seen) {
        if (rdtsc() > deadline) return 0;
        gate(GATE_WAIT_IRQ, 0, 0);
    }
    return 1;
}

int wait_irq_since(int vector, u64 seen, u64 timeout_cycles) {
    u64 deadline = rdtsc() + timeout_cycles;
    while (irq_count[vector] == seen) {
        if (rdtsc() > deadline) return 0;
        gate(GATE_WAIT_IRQ_SINCE, (u64)vector, seen);
    }
    return 1;
}

/* ---------------------------------------------------------------- boot information */
static void add_range(u64 base, u64 size, u32 type) {
    if (machine.nr_ranges >= MAX_MEM_RANGES) return;
    struct mem_range *r = &machine.ranges[machine.nr_ranges++];
    r->base = base; r->size = size; r->type = type;
    if (type == 1) machine.ram_bytes += size;
}

static void copy_cmdline(const char *s) {
    size_t i = 0;
    if (s) for (; s[i] && i < sizeof(machine.cmdline) - 1; i++) machine.cmdline[i] = s[i];
    machine.cmdline[i] = 0;
}

static u64 rsdp_hint;

static void parse_boot_info(void) {
    machine.boot_protocol = (int)boot_protocol;
    if (boot_protocol == 1) {
        const u8 *si = (const u8 *)boot_info_ptr;
        /* hvm_start_info: magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries */
        u64 cmdline = *(const u64 *)(si + 24), memmap = *(const u64 *)(si + 40);
        u32 entries = *(const u32 *)(si + 48);
        rsdp_hint = *(const u64 *)(si + 32);
        copy_cmdline((const char *)cmdline);
        for (u32 i = 0; i < entries; i++) {
            const u8 *e = (const u8 *)memmap + 24 * i;
            add_range(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
        }
    } else {
        const u8 *bp = (const u8 *)boot_info_ptr;
        rsdp_hint = *(const u64 *)(bp + 0x070);
        copy_cmdline((const char *)(u64)*(const u32 *)(bp + 0x228));
        u8 entries = bp[0x1E8];
        for (u32 i = 0; i < entries; i++) {
            const u8 *e = bp + 0x2D0 + 20 * i;
            add_range(*(const u64 *)e, *(const u64 *)(e + 8), *(const u32 *)(e + 16));
        }
    }
}

static int checksum_ok(const u8 *p, u64 n) { u8 s = 0; while (n--) s += *p++; return s == 0; }

static int count_mptable_cpus(void) {
    const u64 areas[][2] = { { 0x9FC00, 0xA0000 }, { 0xF0000, 0x100000 } };
    for (int a = 0; a < 2; a++) {
        for (u64 p = areas[a][0]; p < areas[a][1]; p += 16) {
            const u8 *fp = (const u8 *)p;
            if (memcmp(fp, "_MP_", 4) || !checksum_ok(fp, 16)) continue;
            const u8 *table = (const u8 *)(u64)*(const u32 *)(fp + 4);
            if (!table || memcmp(table, "PCMP", 4)) continue;
            u16 count = *(const u16 *)(table + 34);
            const u8 *e = table + 44;
            int cpus = 0;
            for (u16 i = 0; i < count; i++) {
                if (e[0] == 0) { if (e[3] & 1) cpus++; e += 20; } else e += 8;
            }
            return cpus;
        }
    }
    return 0;
}

/* An ACPI table by signature, through the RSDP (given by the loader, or found by scanning). */
const u8 *acpi_find_table(const char *signature) {
    const u8 *rsdp = (const u8 *)rsdp_hint;
    for (u64 p = 0xE0000; !rsdp && p < 0x100000; p += 16)
        if (!memcmp((const u8 *)p, "RSD PTR ", 8) && checksum_ok((const u8 *)p, 20)) rsdp = (const u8 *)p;
    if (!rsdp) return 0;
    int xsdt = rsdp[15] >= 2 && *(const u64 *)(rsdp + 24);
    const u8 *root = xsdt ? (const u8 *)*(const u64 *)(rsdp + 24) : (const u8 *)(u64)*(const u32 *)(rsdp + 16);
    u32 len = *(const u32 *)(root + 4), width = xsdt ? 8 : 4;
    for (u32 off = 36; off + width <= len; off += width) {
        const u8 *t = xsdt ? (const u8 *)*(const u64 *)(root + off) : (const u8 *)(u64)*(const u32 *)(root + off);
        if (!memcmp(t, signature, 4)) return t;
    }
    return 0;
}

static int count_madt_cpus(void) {
    const u8 *t = acpi_find_table("APIC");
    if (!t) return 0;
    u32 tlen = *(const u32 *)(t + 4);
    int cpus = 0;
    for (const u8 *e = t + 44; e < t + tlen && e[1]; e += e[1]) {
        if (e[0] == 0 && (*(const u32 *)(e + 4) & 1)) cpus++;
        if (e[0] == 9 && (*(const u32 *)(e + 8) & 1)) cpus++;
    }
    return cpus;
}

/* Power off through the FADT's sleep control register (hardware-reduced ACPI), sleep type 5. */
int acpi_poweroff(void) {
    const u8 *fadt = acpi_find_table("FACP");
    if (!fadt || *(const u32 *)(fadt + 4) < 0x100) return -1;
    const u8 *gas = fadt + 0xF4;                       /* Generic Address Structure */
    u64 address = *(const u64 *)(gas + 4);
    u8 value = (5 << 2) | 0x20;                         /* SLP_TYP = 5, SLP_EN */
    if (!address) return -1;
    if (gas[0] == 1) raw_outb((u16)address, value);     /* system I/O space */
    else if (gas[0] == 0 && address < (4UL << 30)) *(volatile u8 *)address = value;  /* memory */
    else return -1;
    return 0;
}

/* ---------------------------------------------------------------- SMP */
u32 this_apic_id(void) {
    u32 a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    return b >> 24;
}

void ap_main(u32 slot) {
    u32 index = __atomic_fetch_add(&cpus_online, 1, __ATOMIC_SEQ_CST);
    if (index < MAX_CPUS) apic_ids[index] = this_apic_id();
    (void)slot;
}

static void start_application_processors(void) {
    memcpy((void *)TRAMPOLINE_ADDR, trampoline_start, (size_t)(trampoline_end - trampoline_start));
    mmio_write32(LAPIC_BASE + 0x300, 0x000C4500);             /* INIT to all but self */
    mmio_write32(LAPIC_BASE + 0x300, 0x000C4600 | (TRAMPOLINE_ADDR >> 12)); /* SIPI */
    mmio_write32(LAPIC_BASE + 0x300, 0x000C4600 | (TRAMPOLINE_ADDR >> 12)); /* SIPI again */
}

static void wait_for_aps(void) {
    /* In ring 3, where waiting costs nothing on PVM hosts. */
    u64 start = rdtsc(), last_change = start;
    u32 seen = cpus_online;
    int expected = machine.cpus_in_tables;
    while (!(expected && (int)cpus_online >= expected)) {
        u64 now = rdtsc();
        if (cpus_online != seen) { seen = cpus_online; last_change = now; }
        if (now - last_change > 4000000000UL) break;  /* ~1-2 s with no news */
        cpu_relax();
    }
}

/*
 * The 8259 PICs: KVM wires the BSP's LINT0 as ExtINT, so an unprogrammed PIC would
 * deliver ISA IRQs on exception vectors. Move them to 0x20-0x2f and mask them all;
 * interrupts come through the IOAPIC.
 */
static void mask_legacy_pic(void) {
    raw_outb(0x20, 0x11); raw_outb(0xA0, 0x11);   /* ICW1: init, ICW4 follows */
    raw_outb(0x21, 0x20); raw_outb(0xA1, 0x28);   /* ICW2: vector bases */
    raw_outb(0x21, 0x04); raw_outb(0xA1, 0x02);   /* ICW3: cascade on IRQ 2 */
    raw_outb(0x21, 0x01); raw_outb(0xA1, 0x01);   /* ICW4: 8086 mode */
    raw_outb(0x21, 0xFF); raw_outb(0xA1, 0xFF);   /* mask everything */
}

/* ---------------------------------------------------------------- TSC clock */
#define PIT_HZ 1193182UL
static u64 tsc_frequency;
static const char *tsc_source = "none";

static void cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static u16 pit_count(void) {
    outb(0x43, 0x00);                              /* latch channel 0 */
    u8 lo = inb(0x40), hi = inb(0x40);
    return (u16)(lo | (hi << 8));
}

u64 tsc_hz(void) {
    if (tsc_frequency) return tsc_frequency;
    u32 a, b, c, d;
    cpuid(0, &a, &b, &c, &d);
    if (a >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);               /* TSC/crystal ratio b/a, crystal c Hz */
        if (a && b && c) { tsc_source = "cpuid"; return tsc_frequency = (u64)c * b / a; }
    }
    /* Channel 0, mode 2, full count: it counts down at 1.193182 MHz. Watch 10 ms of it. */
    outb(0x43, 0x34); outb(0x40, 0); outb(0x40, 0);
    u16 start = pit_count();
    u64 t0 = rdtsc(), ticks = 0;
    u16 last = start;
    while (ticks < PIT_HZ / 100) {
        u16 now = pit_count();
        ticks += (u16)(last - now);
        last = now;
    }
    tsc_source = "pit";
    return tsc_frequency = (rdtsc() - t0) * PIT_HZ / ticks;
}

const char *tsc_hz_source(void) { return tsc_source; }

u64 now_ns(void) {
    u64 hz = tsc_hz(), t = rdtsc();
    return t / hz * 1000000000UL + t % hz * 1000000000UL / hz;
}

u64 cmdline_u64(const char *key, u64 fallback) {
    size_t klen = strlen(key);
    for (const char *p = machine.cmdline; *p; p++) {
        if ((p != machine.cmdline && p[-1] != ' ') || memcmp(p, key, klen) || p[klen] != '=') continue;
        const char *v = p + klen + 1;
        u64 value = 0, base = 10;
        if (v[0] == '0' && v[1] == 'x') { base = 16; v += 2; }
        for (;; v++) {
            u64 digit;
            if (*v >= '0' && *v <= '9') digit = (u64)(*v - '0');
            else if (base == 16 && *v >= 'a' && *v <= 'f') digit = (u64)(*v - 'a' + 10);
            else break;
            value = value * base + digit;
        }
        return value;
    }
    return fallback;
}

/* ---------------------------------------------------------------- start */
static void user_start(void) {
    if (machine.cpus_in_tables > 1) wait_for_aps();
    main();
    exit(0);
}

void runtime_start(void) {
    apic_ids[0] = this_apic_id();
    setup_tables();
    mask_legacy_pic();
    mmio_write32(LAPIC_BASE + 0xF0, 0x1FF);   /* local APIC software-enabled, spurious vector 0xff */
    parse_boot_info();
    machine.cpus_in_madt = count_madt_cpus();
    machine.cpus_in_tables = count_mptable_cpus();
    machine.cpu_table = "mptable";
    if (!machine.cpus_in_tables) { machine.cpus_in_tables = machine.cpus_in_madt; machine.cpu_table = "madt"; }
    if (!machine.cpus_in_tables) machine.cpu_table = "none";
    if (machine.cpus_in_tables > 1) start_application_processors();
    enter_user(user_start, (u64)(user_stack + sizeof(user_stack)));
}
