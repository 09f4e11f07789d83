/*
 * hostile: a live hostile guest. It writes random values to random ports and MMIO addresses of
 * every device vmkit emulates in Python (the legacy ports, PCI configuration through 0xCF8/0xCFC
 * and ECAM, and BAR 0 of each virtio-pci function), with random widths, unaligned and across
 * register and device boundaries, reading as often as writing. Then it restores what it needs to
 * report (the UART), resets each virtio-rng device and checks it still serves a request, and
 * ends with exit(0). A VMM that raises on an access ends the VM early instead: the test fails.
 *
 * Parameters: seed=N (default 1), iterations=N (default 20000), trace_from=N (print each access
 * from iteration N on to the debug console, port 0xe9, before doing it: the last line before a
 * crash is the access that caused it).
 *
 * Hostile, not suicidal. The guest keeps away from what would end it or corrupt it, so that it
 * can report; each rule is applied byte by byte, as a VMM decoding every port or byte of a wide
 * access would see it:
 *   - never a write to the debug-exit port 0xf4 (it ends the VM);
 *   - on 0x64 (i8042 command) never 0xD1 (write output port: bit 0 low resets) nor 0xF0-0xFE
 *     with bit 0 clear (pulse output lines: 0xFE pulses the reset line);
 *   - on 0x600 (ACPI sleep control) SLP_EN (0x20) is always clear; on 0x602 (ACPI reset
 *     register) never the reset value 0x06; on 0xcf9 (a byte access there is the reset control
 *     register of PC chipsets; vmkit has none) bit 2 (RST_CPU) is always clear;
 *   - MSI-X table entries only ever hold fixed-delivery messages to 0xFEExxxxx with a vector in
 *     0x30..0xEF (data bits 8-10 forced to 0, address bits 20-63 forced to 0xFEE): an INIT, SMI
 *     or NMI would reset or wedge a vCPU, a vector below 0x20 would arrive as an exception, and
 *     on a VMM that models an MSI as a memory write an address outside 0xFEExxxxx would be a DMA
 *     into our own RAM. Before a write unmasks an entry, the entry is read back and repaired if
 *     it is not such a message (the VMM may have reset it);
 *   - a random write never enables a virtqueue (bit 0 of queue_enable, offset 0x1C of the common
 *     configuration, is forced to 0): a queue enabled with random ring addresses inside our RAM
 *     would let the device write used-ring entries and random bytes over our code and data.
 *     Queues are enabled only by program_queue(), which first places all three rings and the
 *     buffers in `scratch`, a 64 KiB area that nothing else uses;
 *   - never an access to guest RAM, the LAPIC or the IOAPIC: a virtio BAR that random
 *     configuration writes moved below 1 MiB, onto an e820 range (RAM), the ECAM window or
 *     above 0xFEC00000 is not touched there; it is moved back home (or to a random free place);
 *   - the 8259 PICs and the PIT are KVM's, not vmkit's, and are not touched.
 */
#include "virtio.h"

#define ECAM_BASE 0xE0000000UL
#define ECAM_SIZE 0x100000UL
#define BAR_SIZE 0x8000UL
#define BAR_SLACK 0x10UL                    /* an access at the end of a BAR runs this far past it */
#define HIGH_LIMIT 0xFEC00000UL             /* IOAPIC, HPET, LAPIC, KVM's TSS pages and up */
#define COMMON_QUEUE_ENABLE 0x1C
#define MSIX_TABLE 0x4000
#define MSIX_PBA 0x5000
#define NOTIFY 0x3000
#define DEBUGCON 0xE9
#define COM1 0x3F8
#define MAX_SLOTS 32
#define MAX_VIRTIO 8
#define SCRATCH_SIZE 0x10000UL
#define VECTOR_LOW 0x30
#define VECTOR_HIGH 0xEF

/* ---------------------------------------------------------------- xorshift64* */
static u64 prng;

static u64 rnd(void) {
    prng ^= prng >> 12;
    prng ^= prng << 25;
    prng ^= prng >> 27;
    return prng * 0x2545F4914F6CDD1DUL;
}

static u64 below(u64 n) { return n ? rnd() % n : 0; }

static void seed_prng(u64 seed) {               /* splitmix64 of the seed: never a zero state */
    u64 z = seed + 0x9E3779B97F4A7C15UL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
    prng = (z ^ (z >> 31)) | 1;
}

static u64 mask_for(int width) { return width == 8 ? ~0UL : (1UL << (8 * width)) - 1; }

/* Random values, with the ones decoders trip on most (0, all ones, small, one bit) over-weighted. */
static u64 random_value(int width) {
    u64 v;
    switch (below(8)) {
    case 0: v = 0; break;
    case 1: v = ~0UL; break;
    case 2: v = below(4); break;
    case 3: v = 1UL << below(64); break;
    default: v = rnd(); break;
    }
    return v & mask_for(width);
}

static u64 set_byte(u64 v, int i, u8 b) { return (v & ~(0xFFUL << (8 * i))) | ((u64)b << (8 * i)); }

/* ---------------------------------------------------------------- the debug console (trace) */
static void dbg_putc(char c) { __asm__ volatile("outb %b0, %w1" :: "a"(c), "Nd"((u16)DEBUGCON)); }
static void dbg_puts(const char *s) { while (*s) dbg_putc(*s++); }

static void dbg_num(u64 v, unsigned base) {
    char buf[24];
    int n = 0;
    if (base == 16) dbg_puts("0x");
    do { buf[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    while (n) dbg_putc(buf[--n]);
}

/* ---------------------------------------------------------------- the accesses */
static u64 iteration, trace_from;
static u64 count_pio, count_mmio, count_reads, count_writes;

static void trace(const char *space, int is_write, u64 address, int width, u64 value) {
    if (iteration < trace_from) return;
    dbg_puts("\nTRACE ");
    dbg_num(iteration, 10);
    dbg_puts(is_write ? " write " : " read ");
    dbg_puts(space);
    dbg_putc(' ');
    dbg_num(address, 16);
    dbg_puts(" width=");
    dbg_num((u64)width, 10);
    if (is_write) { dbg_puts(" value="); dbg_num(value, 16); }
    dbg_putc('\n');
}

static u32 pio(u16 port, int width, int is_write, u32 value) {
    trace("pio", is_write, port, width, value);
    count_pio++;
    if (is_write) {
        count_writes++;
        if (width == 1) __asm__ volatile("outb %b0, %w1" :: "a"(value), "Nd"(port));
        else if (width == 2) __asm__ volatile("outw %w0, %w1" :: "a"(value), "Nd"(port));
        else __asm__ volatile("outl %0, %w1" :: "a"(value), "Nd"(port));
        return 0;
    }
    count_reads++;
    u32 v;
    if (width == 1) { u8 b; __asm__ volatile("inb %w1, %b0" : "=a"(b) : "Nd"(port)); v = b; }
    else if (width == 2) { u16 h; __asm__ volatile("inw %w1, %w0" : "=a"(h) : "Nd"(port)); v = h; }
    else __asm__ volatile("inl %w1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

/* One instruction of exactly `width` bytes (the compiler may not split or merge it). */
static u64 mmio(u64 address, int width, int is_write, u64 value) {
    trace("mmio", is_write, address, width, value);
    count_mmio++;
    if (is_write) {
        count_writes++;
        switch (width) {
        case 1: __asm__ volatile("movb %b0, (%1)" :: "q"(value), "r"(address) : "memory"); break;
        case 2: __asm__ volatile("movw %w0, (%1)" :: "r"(value), "r"(address) : "memory"); break;
        case 4: __asm__ volatile("movl %k0, (%1)" :: "r"(value), "r"(address) : "memory"); break;
        default: __asm__ volatile("movq %0, (%1)" :: "r"(value), "r"(address) : "memory"); break;
        }
        return 0;
    }
    count_reads++;
    u64 v = 0;
    switch (width) {
    case 1: { u8 b; __asm__ volatile("movb (%1), %0" : "=q"(b) : "r"(address) : "memory"); v = b; break; }
    case 2: { u16 h; __asm__ volatile("movw (%1), %0" : "=r"(h) : "r"(address) : "memory"); v = h; break; }
    case 4: { u32 w; __asm__ volatile("movl (%1), %0" : "=r"(w) : "r"(address) : "memory"); v = w; break; }
    default: __asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(address) : "memory"); break;
    }
    return v;
}

/* ---------------------------------------------------------------- what is on the machine */
static u32 slots[MAX_SLOTS];                /* bdf of each present function on bus 0 */
static int nr_slots;

struct vdev {
    u32 bdf;
    u64 original_bar;                       /* BAR 0, where vmkit's virtio-pci has its registers */
    u32 saved_bars[6];                      /* all six BAR registers as they were at the start */
    int is_rng;
    u32 vectors;                            /* MSI-X table entries */
    int msix_cap;                           /* its capability's offset in configuration space */
};
static struct vdev vdevs[MAX_VIRTIO];
static int nr_vdevs;
static u64 count_ecam, count_virtio, count_bar_skipped, count_bar_moved, count_sanitized;
static u64 count_queue_setups, count_msix_repairs;

static u8 scratch[SCRATCH_SIZE] __attribute__((aligned(4096)));

static int overlaps(u64 a, u64 alen, u64 b, u64 blen) { return a < b + blen && b < a + alen; }

/* May we touch [address, address + length) as MMIO without hitting RAM, the LAPIC or the IOAPIC? */
static int mmio_range_safe(u64 address, u64 length) {
    if (address < 0x100000 || address + length > HIGH_LIMIT) return 0;
    if (overlaps(address, length, ECAM_BASE, ECAM_SIZE)) return 0;
    for (int i = 0; i < machine.nr_ranges; i++)
        if (overlaps(address, length, machine.ranges[i].base, machine.ranges[i].size)) return 0;
    return 1;
}

/* A configuration write of our own (not a random one), traced like the others. */
static void config_write32(u32 bdf, u32 reg, u32 value) {
    trace("config", 1, ((u64)bdf << 12) | reg, 4, value);
    pci_write32(bdf, reg, value);
}

/* BAR 0 as configuration space says now (random writes move it); 0 for none. */
static u64 current_bar(const struct vdev *d) {
    u32 low = pci_read32(d->bdf, 0x10);
    if (low & 1) return 0;
    u64 address = low & ~0xFUL;
    if ((low & 6) == 4) address |= (u64)pci_read32(d->bdf, 0x14) << 32;
    return address;
}

static void discover(void) {
    for (u32 dev = 0; dev < 32; dev++) {
        u32 bdf = PCI_BDF(0, dev, 0), id = pci_read32(bdf, 0);
        if (!pci_present(id)) continue;
        slots[nr_slots++] = bdf;
        if ((id & 0xFFFF) != 0x1AF4 || nr_vdevs == MAX_VIRTIO) continue;
        struct vdev *d = &vdevs[nr_vdevs++];
        d->bdf = bdf;
        d->is_rng = (id >> 16) == 0x1044;
        /* Every memory BAR assigned (no firmware ran) and saved, so the end can put them back. */
        for (int bar = 0; bar < 6; bar++) {
            u32 low = pci_read32(bdf, 0x10 + 4 * (u32)bar);
            if (low & 1) continue;
            pci_bar_address(bdf, bar);
            if ((low & 6) == 4) bar++;
        }
        for (int bar = 0; bar < 6; bar++) d->saved_bars[bar] = pci_read32(bdf, 0x10 + 4 * (u32)bar);
        d->original_bar = current_bar(d);
        int cap = pci_next_cap(bdf, 0x11, 0);
        d->msix_cap = cap;
        d->vectors = cap ? (u32)(pci_read16(bdf, (u32)cap + 2) & 0x7FF) + 1 : 0;
        /* Every table entry starts as a safe message, still masked (see the rules above). */
        if (!mmio_range_safe(d->original_bar, BAR_SIZE + BAR_SLACK)) continue;
        for (u32 e = 0; e < d->vectors && e < 64; e++) {
            volatile u32 *entry = (volatile u32 *)(d->original_bar + MSIX_TABLE + 16 * e);
            entry[0] = 0xFEE00000U;
            entry[1] = 0;
            entry[2] = VECTOR_LOW + e;
        }
    }
}

/* ---------------------------------------------------------------- port I/O */
struct pio_device { u16 base, length; };
static const struct pio_device pio_devices[] = {
    { 0x3F8, 8 },   /* COM1 16550A */
    { 0x60, 5 },    /* i8042: 0x60 data, 0x64 command (0x61 is KVM's PC speaker port) */
    { 0x70, 2 },    /* CMOS RTC: index, data */
    { 0xF4, 1 },    /* debug exit: read only */
    { 0xE9, 1 },    /* debug console */
    { 0x600, 3 },   /* ACPI sleep control, sleep status, reset register */
    { 0xCF8, 8 },   /* PCI configuration mechanism #1: address, data */
};
#define NR_PIO_DEVICES (sizeof(pio_devices) / sizeof(pio_devices[0]))

/* Byte by byte: make a write safe (see the rules above); 0 when it must not happen at all. */
static int pio_write_allowed(u16 port, int width, u32 *value) {
    u64 v = *value;
    for (int i = 0; i < width; i++) {
        u16 p = (u16)(port + i);
        u8 b = (u8)(v >> (8 * i)), was = b;
        if (p == 0xF4) return 0;
        if (p == 0x64 && b == 0xD1) b = 0xD0;
        if (p == 0x64 && b >= 0xF0 && !(b & 1)) b |= 1;
        if (p == 0x600) b &= (u8)~0x20;
        if (p == 0x602 && b == 0x06) b = 0x07;
        if (p == 0xCF9 && width == 1) b &= (u8)~0x04;
        if (b != was) { v = set_byte(v, i, b); count_sanitized++; }
    }
    *value = (u32)v;
    return 1;
}

static void random_pio(void) {
    const struct pio_device *d = &pio_devices[below(NR_PIO_DEVICES)];
    static const int widths[] = { 1, 2, 4 };
    int width = widths[below(3)];
    u64 where = below(16);
    u16 port;
    if (where < 12) port = (u16)(d->base + below(d->length));          /* in it (wide ones run past) */
    else if (where < 14) port = (u16)(d->base - 1 - below(3));         /* starting just before it */
    else port = (u16)(d->base + d->length + below(3));                 /* just after it */
    u32 value = (u32)random_value(width);
    int is_write = (int)below(2);
    /* Address register writes that name a real function, half of the time. */
    if (is_write && port == 0xCF8 && width == 4 && below(2))
        value = 0x80000000U | (slots[below((u64)nr_slots)] << 8) | ((u32)below(256) & 0xFC);
    if (is_write && !pio_write_allowed(port, width, &value)) { is_write = 0; count_sanitized++; }
    pio(port, width, is_write, value);
}

/* ---------------------------------------------------------------- MMIO */
static int random_mmio_width(void) { static const int w[] = { 1, 2, 4, 8 }; return w[below(4)]; }

static u64 random_offset(u64 start, u64 span, int width) {
    u64 offset = start + below(span);
    if (below(8) == 0 && offset >= 8) offset -= 1 + below(8);         /* across the boundary below */
    if (below(2)) offset &= ~(u64)(width - 1);                        /* aligned, half of the time */
    return offset;
}

static void random_ecam(void) {
    int width = random_mmio_width();
    u64 function, reg;
    u64 r = below(4);
    if (r < 2) function = (u64)slots[below((u64)nr_slots)] << 12;      /* a present function */
    else if (r == 2) function = below(32) << 15;                       /* any device, function 0 */
    else function = below(256) << 12;                                  /* any device and function */
    r = below(4);
    if (r < 2) reg = below(0x100);
    else if (r == 2) reg = below(0x40);
    else reg = below(0x1000);
    if (below(2)) reg &= ~(u64)(width - 1);
    u64 address = ECAM_BASE + function + reg;
    if (address + (u64)width > ECAM_BASE + ECAM_SIZE) address = ECAM_BASE + ECAM_SIZE - (u64)width;
    count_ecam++;
    if (below(2)) mmio(address, width, 1, random_value(width));
    else mmio(address, width, 0, 0);
}

/* Is this MSI-X table entry a message we allow to be unmasked? */
static int entry_safe(u64 bar, u64 entry) {
    u64 at = bar + MSIX_TABLE + 16 * entry;
    u32 lo = (u32)mmio(at, 4, 0, 0), hi = (u32)mmio(at + 4, 4, 0, 0), data = (u32)mmio(at + 8, 4, 0, 0);
    u32 vector = data & 0xFF;
    return (lo >> 20) == 0xFEE && hi == 0 && !(data & 0x700) && vector >= VECTOR_LOW && vector <= VECTOR_HIGH;
}

static void repair_entry(u64 bar, u64 entry) {
    u64 at = bar + MSIX_TABLE + 16 * entry;
    mmio(at, 4, 1, 0xFEE00000U | ((u32)below(256) << 12));
    mmio(at + 4, 4, 1, 0);
    mmio(at + 8, 4, 1, VECTOR_LOW + below(VECTOR_HIGH - VECTOR_LOW + 1));
    count_msix_repairs++;
}

/* Byte by byte: keep queues disabled and MSI-X messages safe (see the rules above). */
static void sanitize_bar_write(u64 bar, u64 offset, int width, u64 *value) {
    u64 v = *value;
    for (int i = 0; i < width; i++) {
        u64 o = offset + (u64)i;
        u8 b = (u8)(v >> (8 * i)), was = b;
        if (o == COMMON_QUEUE_ENABLE) b &= (u8)~1;
        if (o >= MSIX_TABLE && o < MSIX_PBA) {
            u64 k = (o - MSIX_TABLE) % 16;
            if (k == 2) b = (u8)(0xE0 | (b & 0x0F));                   /* address bits 20-23 */
            if (k == 3) b = 0xFE;                                     /* address bits 24-31 */
            if (k >= 4 && k <= 7) b = 0;                              /* address bits 32-63 */
            if (k == 8) b = (u8)(VECTOR_LOW + b % (VECTOR_HIGH - VECTOR_LOW + 1));
            if (k == 9) b &= (u8)~0x07;                               /* fixed delivery */
            if (k == 12 && !(b & 1) && !entry_safe(bar, (o - MSIX_TABLE) / 16))
                repair_entry(bar, (o - MSIX_TABLE) / 16);
        }
        if (b != was) { v = set_byte(v, i, b); count_sanitized++; }
    }
    *value = v;
}

/* A place for a ring or buffer: in `scratch` (aligned or not), or now and then outside RAM. */
static u64 scratch_place(u64 align) {
    if (below(16) == 0) return (1UL << 40) + below(1UL << 20);          /* not guest memory at all */
    u64 offset = below(SCRATCH_SIZE - 0x2000);
    if (below(8)) offset &= ~(align - 1);
    return (u64)scratch + offset;
}

static void write64(u64 address, u64 value) {
    if (below(2)) mmio(address, 8, 1, value);
    else { mmio(address, 4, 1, (u32)value); mmio(address + 4, 4, 1, value >> 32); }
}

/*
 * The one way a queue gets enabled: rings in `scratch` (or outside RAM, which the device must
 * refuse), a size and an MSI-X vector that are mostly valid, descriptors that point into
 * `scratch` or nowhere; then, mostly, DRIVER_OK, MSI-X on and a notification, so the device
 * does serve requests and interrupts now and then. Whatever the device writes lands in `scratch`.
 */
static void program_queue(const struct vdev *dev, u64 bar) {
    static const u16 valid_sizes[] = { 1, 2, 4, 8, 16, 64, 256 }, invalid_sizes[] = { 0, 3, 100, 512, 0xFFFF };
    static const u16 flags[] = { VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE,
                                 VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE,
                                 VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_WRITE, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
                                 VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT,
                                 4 /* INDIRECT, not negotiated */ | VIRTQ_DESC_F_WRITE, 0xFFFF };
    u16 index = below(4) ? 0 : (u16)below(3);
    u16 size = below(4) ? valid_sizes[below(7)] : invalid_sizes[below(5)];
    u16 vector = below(4) ? (u16)below(dev->vectors + 1) : (below(2) ? 0xFFFF : (u16)rnd());
    u64 desc = scratch_place(16), avail = scratch_place(2), used = scratch_place(4);
    u16 filled = size < 16 ? size : 16;
    count_queue_setups++;
    if (desc >= (u64)scratch && desc < (u64)scratch + SCRATCH_SIZE)
        for (u16 i = 0; i < filled; i++) {
            struct virtq_desc *d = (struct virtq_desc *)(desc + 16UL * i);
            d->addr = below(16) ? (u64)scratch + below(SCRATCH_SIZE - 0x1000) : rnd();
            d->len = (u32)below(0x1001);
            d->flags = flags[below(16)];
            d->next = (u16)below((u64)size + 1);
        }
    if (avail >= (u64)scratch && avail < (u64)scratch + SCRATCH_SIZE) {
        volatile u16 *a = (volatile u16 *)avail;
        a[0] = below(8) ? 0 : 1;                                       /* flags: NO_INTERRUPT */
        for (u16 i = 0; i < filled; i++) a[2 + i] = (u16)below((u64)size + (below(8) ? 0 : 1));
        a[1] = (u16)(below(2) ? 1 : 1 + below((u64)size + (below(8) ? 0 : 2)));  /* idx: past size, rarely */
    }
    if (below(8)) mmio(bar + 0x14, 1, 1, 0);                           /* a reset first, mostly */
    mmio(bar + 0x16, 2, 1, index);
    mmio(bar + 0x18, 2, 1, size);
    mmio(bar + 0x1A, 2, 1, vector);
    write64(bar + 0x20, desc);
    write64(bar + 0x28, avail);
    write64(bar + 0x30, used);
    mmio(bar + COMMON_QUEUE_ENABLE, 2, 1, 1);
    if (dev->msix_cap && below(4)) {
        /* MSI-X on, and the queue's entry unmasked (made a safe message first). */
        u64 entry = vector <= dev->vectors ? vector : below(dev->vectors + 1);
        if (!entry_safe(bar, entry)) repair_entry(bar, entry);
        mmio(bar + MSIX_TABLE + 16 * entry + 12, 4, 1, 0);
        trace("config", 1, ((u64)dev->bdf << 12) | (u64)(dev->msix_cap + 2), 2, 0x8000);
        pci_write16(dev->bdf, (u32)dev->msix_cap + 2, 0x8000);
    }
    if (below(4)) {
        static const u8 statuses[] = { 0x0F, 0x0F, 0x0F, 0x07, 0x04, 0x0B };
        mmio(bar + 0x14, 1, 1, statuses[below(6)]);
    }
    if (below(4)) mmio(bar + NOTIFY + 4 * (below(4) ? index : below(3)), 2, 1, index);
}

static void random_virtio(void) {
    struct vdev *d = &vdevs[below((u64)nr_vdevs)];
    u64 bar = current_bar(d);
    if (bar != d->original_bar) count_bar_moved++;
    if (!mmio_range_safe(bar, BAR_SIZE + BAR_SLACK)) {
        /* Not where we may touch it: put it somewhere we may (home, or a random free place). */
        u64 to = d->original_bar, place = 0x80000000UL + below(0x60000000UL / BAR_SIZE) * BAR_SIZE;
        if (below(2) && mmio_range_safe(place, BAR_SIZE + BAR_SLACK)) to = place;
        config_write32(d->bdf, 0x10, (u32)to);
        if ((pci_read32(d->bdf, 0x10) & 6) == 4) config_write32(d->bdf, 0x14, (u32)(to >> 32));
        count_bar_skipped++;
        return;
    }
    count_virtio++;
    if (below(64) == 0) { program_queue(d, bar); return; }
    int width = random_mmio_width();
    u64 offset;
    switch (below(16)) {
    case 0: case 1: case 2: case 3: case 4: case 5: offset = random_offset(0x0000, 0x40, width); break;  /* common */
    case 6: offset = random_offset(0x1000, 0x8, width); break;                                          /* ISR */
    case 7: offset = random_offset(0x2000, 0x10, width); break;                                         /* device */
    case 8: case 9: offset = random_offset(NOTIFY, 0x10, width); break;
    case 10: case 11: case 12: offset = random_offset(MSIX_TABLE, 0x40, width); break;
    case 13: offset = random_offset(MSIX_PBA, 0x10, width); break;
    case 14: offset = (below(8) << 12) - 1 - below(7); break;          /* across a region's start */
    default: offset = below(BAR_SIZE); break;
    }
    offset &= BAR_SIZE - 1;
    if (below(2)) {
        u64 value = random_value(width);
        sanitize_bar_write(bar, offset, width, &value);
        mmio(bar + offset, width, 1, value);
    } else {
        mmio(bar + offset, width, 0, 0);
    }
}

/* ---------------------------------------------------------------- afterwards */
static u8 uart_lcr, uart_mcr, uart_ier, uart_dll, uart_dlm, uart_fifo;

static void save_uart(void) {
    uart_lcr = inb(COM1 + 3);
    uart_mcr = inb(COM1 + 4);
    uart_ier = inb(COM1 + 1);
    uart_fifo = (inb(COM1 + 2) & 0xC0) ? 1 : 0;
    outb(COM1 + 3, uart_lcr | 0x80);
    uart_dll = inb(COM1);
    uart_dlm = inb(COM1 + 1);
    outb(COM1 + 3, uart_lcr);
}

static void restore_uart(void) {
    outb(COM1 + 3, 0x80);                   /* DLAB: the divisor */
    outb(COM1, uart_dll);
    outb(COM1 + 1, uart_dlm);
    outb(COM1 + 3, uart_lcr & 0x7F);
    outb(COM1 + 4, uart_mcr);               /* loopback off again */
    outb(COM1 + 1, uart_ier);
    outb(COM1 + 2, uart_fifo ? 0x07 : 0x06); /* FIFO as it was, both FIFOs cleared */
}

/* virtio_find() for the function at `bdf` (it finds only the first of a type). */
static int virtio_at(struct virtio_dev *dev, u32 bdf) {
    memset(dev, 0, sizeof(*dev));
    dev->bdf = bdf;
    pci_enable(bdf);
    for (int cap = pci_next_cap(bdf, 0x09, 0); cap; cap = pci_next_cap(bdf, 0x09, cap)) {
        u8 type = pci_read8(bdf, (u32)cap + 3), bar = pci_read8(bdf, (u32)cap + 4);
        u32 offset = pci_read32(bdf, (u32)cap + 8);
        volatile u8 *at = (volatile u8 *)(pci_bar_address(bdf, bar) + offset);
        if (type == 1 && !dev->common) dev->common = at;
        else if (type == 2 && !dev->notify_base) {
            dev->notify_base = at;
            dev->notify_multiplier = pci_read32(bdf, (u32)cap + 16);
        } else if (type == 3 && !dev->isr) dev->isr = at;
        else if (type == 4 && !dev->device) dev->device = at;
    }
    return dev->common && dev->notify_base && dev->isr;
}

static struct virtq queue;
static u8 buffer[64];

/* Reset the device and ask it for 32 random bytes, polled. */
static int rng_works(u32 bdf) {
    struct virtio_dev dev;
    if (!virtio_at(&dev, bdf)) return 0;
    if (virtio_negotiate(&dev, VIRTIO_F_VERSION_1) != VIRTIO_F_VERSION_1) return 0;
    if (!virtq_setup(&dev, &queue, 0, 16, 0xFFFF)) return 0;
    virtio_driver_ok(&dev);
    memset(buffer, 0, sizeof(buffer));
    virtq_post(&queue, buffer, 32, 1);
    u32 length = 0;
    for (u64 end = rdtsc() + 10000000000UL; !virtq_take_used(&queue, &length);)
        if (rdtsc() > end) return 0;
    int nonzero = 0;
    for (u32 i = 0; i < length && i < sizeof(buffer); i++) nonzero |= buffer[i];
    return length == 32 && nonzero;
}

/*
 * Put every BAR back where it started: first each memory BAR to a free place of its own, then
 * each home. (A BAR moved onto another device's range stays unmapped until it moves again, and
 * writing the address it already holds is no move.)
 */
static void restore_bars(void) {
    for (int i = 0; i < nr_vdevs; i++)
        for (int bar = 0; bar < 6; bar++) {
            u32 low = vdevs[i].saved_bars[bar];
            if (low & 1) continue;
            u32 place = 0xD0000000U + 0x100000U * (u32)i + 0x10000U * (u32)bar;
            if (low & ~0xFU) config_write32(vdevs[i].bdf, 0x10 + 4 * (u32)bar, place);
            if ((low & 6) == 4) config_write32(vdevs[i].bdf, 0x14 + 4 * (u32)bar++, 0);
        }
    for (int i = 0; i < nr_vdevs; i++)
        for (int bar = 0; bar < 6; bar++) config_write32(vdevs[i].bdf, 0x10 + 4 * (u32)bar, vdevs[i].saved_bars[bar]);
}

void main(void) {
    u64 seed = cmdline_u64("seed", 1), iterations = cmdline_u64("iterations", 20000);
    trace_from = cmdline_u64("trace_from", ~0UL);
    seed_prng(seed);
    for (u64 i = 0; i < SCRATCH_SIZE / 8; i++) ((u64 *)scratch)[i] = rnd();
    save_uart();
    discover();
    u64 irqs_before = 0;
    for (int v = VECTOR_LOW; v <= VECTOR_HIGH; v++) irqs_before += irq_count[v];
    u64 start = now_ns();

    for (iteration = 0; iteration < iterations; iteration++) {
        u64 r = below(16);
        if (r < 7) random_pio();
        else if (r < 10 || !nr_vdevs) random_ecam();
        else random_virtio();
    }

    u64 elapsed = now_ns() - start;
    trace_from = ~0UL;
    restore_uart();
    u64 irqs = 0;
    for (int v = VECTOR_LOW; v <= VECTOR_HIGH; v++) irqs += irq_count[v];
    printf("\n");                           /* after whatever random bytes went to the console */
    RESULT("hostile_seed", "%lu", seed);
    RESULT("hostile_iterations", "%lu", iterations);
    RESULT("hostile_accesses", "%lu", count_pio + count_mmio);
    RESULT("hostile_pio", "%lu", count_pio);
    RESULT("hostile_mmio", "%lu", count_mmio);
    RESULT("hostile_reads", "%lu", count_reads);
    RESULT("hostile_writes", "%lu", count_writes);
    RESULT("hostile_ecam_ops", "%lu", count_ecam);
    RESULT("hostile_virtio_ops", "%lu", count_virtio);
    RESULT("hostile_queue_setups", "%lu", count_queue_setups);
    RESULT("hostile_bar_moved", "%lu", count_bar_moved);
    RESULT("hostile_bar_skipped", "%lu", count_bar_skipped);
    RESULT("hostile_sanitized", "%lu", count_sanitized);
    RESULT("hostile_msix_repairs", "%lu", count_msix_repairs);
    RESULT("hostile_irqs", "%lu", irqs - irqs_before);          /* taken: ring 3 runs with IF=0 */
    /* MSIs that reached this CPU and wait in the local APIC's IRR (a read only). */
    u32 pending = 0;
    for (u32 v = VECTOR_LOW; v <= VECTOR_HIGH; v++)
        pending += (mmio_read32(0xFEE00200UL + 0x10 * (v / 32)) >> (v % 32)) & 1;
    RESULT("hostile_msi_vectors_pending", "%u", pending);
    RESULT("hostile_ms", "%lu", elapsed / 1000000);

    int rngs = 0, working = 0;
    restore_bars();
    for (int i = 0; i < nr_vdevs; i++) {
        if (!vdevs[i].is_rng) continue;
        rngs++;
        working += rng_works(vdevs[i].bdf);
    }
    RESULT("hostile_rng_devices", "%d", rngs);
    if (rngs) RESULT("hostile_rng_after", "%d", working == rngs);
    RESULT("hostile_done", "%d", 1);
    exit(rngs && working != rngs ? 3 : 0);
}
