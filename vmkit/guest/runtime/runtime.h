/* vmkit guest runtime: what a test program (running in ring 3 with IOPL=3) may use. */
#ifndef VMKIT_RUNTIME_H
#define VMKIT_RUNTIME_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long size_t;

#define MAX_CPUS 64
#define MAX_MEM_RANGES 32

struct mem_range { u64 base, size; u32 type; };

/* What the runtime learned about the machine before entering the program. */
struct machine_info {
    int boot_protocol;              /* 1 = PVH, 2 = Linux boot_params */
    u64 ram_bytes;                  /* usable RAM (type 1 ranges) */
    int nr_ranges;
    struct mem_range ranges[MAX_MEM_RANGES];
    int cpus_in_tables;             /* from the MP table or the ACPI MADT; 0 if neither */
    const char *cpu_table;          /* "mptable", "madt" or "none" */
    int cpus_in_madt;               /* enabled CPUs in the ACPI MADT; 0 without ACPI */
    char cmdline[512];
};

extern struct machine_info machine;
extern volatile u32 cpus_online;    /* the BSP plus every AP that checked in */
extern volatile u32 apic_ids[MAX_CPUS]; /* APIC ID of each CPU in check-in order (BSP first) */
extern u8 _end[];                   /* first byte after the image (bss included) */
extern volatile u64 irq_count[256];
extern volatile u32 breakpoints;  /* #BP exceptions taken (and resumed from) */

/* The program's entry point, in ring 3. Returning ends the VM with status 0 through debug-exit. */
void main(void);

/* Console (COM1, one exit per line) and results. */
void putc(char c);
void puts(const char *s);
void printf(const char *fmt, ...);
void flush(void);
/* Machine-readable result lines: "RESULT key=value". */
#define RESULT(key, fmt, ...) printf("RESULT " key "=" fmt "\n", ##__VA_ARGS__)

/* Ending: writes v to the debug-exit port 0xf4 (VM status (v << 1) | 1). */
__attribute__((noreturn)) void exit(int v);

/* Ports: every port is open to ring 3 through the TSS I/O bitmap. */
void outb(u16 port, u8 v);
u8 inb(u16 port);
void outl(u16 port, u32 v);
u32 inl(u16 port);

static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
/* The TSC as a clock: its frequency (CPUID leaf 0x15, else measured against the PIT once). */
u64 tsc_hz(void);
u64 now_ns(void);
const char *tsc_hz_source(void);    /* "cpuid" or "pit" */

static inline void cpu_relax(void) { __asm__ volatile("pause"); }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }

/* Ring-0 services, reached with a `ud2` gate (see runtime.c). */
enum gate_op { GATE_WAIT_IRQ = 1, GATE_TRIPLE_FAULT, GATE_RING0_INT3, GATE_RING0_POPCNT, GATE_ENABLE_SYSCALL,
               GATE_RING0_FWAIT, GATE_WAIT_IRQ_SINCE };
u64 gate(u64 op, u64 a, u64 b);

/* ACPI: find a table by signature; power off through the FADT (returns only on failure). */
const u8 *acpi_find_table(const char *signature);
int acpi_poweroff(void);

/* Interrupts: route an IOAPIC pin to a vector on CPU 0, then wait for it to arrive. */
void ioapic_route(int pin, int vector);
int wait_irq(int vector, u64 timeout_cycles);
/* Wait until irq_count[vector] differs from `seen` (read before starting what will interrupt):
   the count is compared again in ring 0 with interrupts masked, just before `sti; hlt`, so an
   interrupt that came in between is not waited for. 0 on timeout (checked after each wake-up). */
int wait_irq_since(int vector, u64 seen, u64 timeout_cycles);

/* The command line: the value of "key=number" (decimal or 0x hex), or `fallback`. */
u64 cmdline_u64(const char *key, u64 fallback);

/* The APIC ID of the CPU running this (CPUID leaf 1). */
u32 this_apic_id(void);

/* Helpers. */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
#endif
