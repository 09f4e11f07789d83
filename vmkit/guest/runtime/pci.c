#include "pci.h"

/*
 * ECAM is used when the ACPI MCFG table names it, or when the command line gives its base
 * (pci_ecam=0x...: for platforms that describe it only in AML); pci_cf8=1 forces ports 0xCF8/0xCFC.
 */

static u64 ecam_base;
static int ecam_checked;

static volatile u8 *ecam(u32 bdf, u32 offset) {
    if (!ecam_checked) {
        const u8 *mcfg = cmdline_u64("pci_cf8", 0) ? 0 : acpi_find_table("MCFG");
        /* header (36) + reserved (8) + first allocation: base, segment, start bus, end bus */
        if (mcfg && *(const u32 *)(mcfg + 4) >= 44 + 16 && mcfg[44 + 10] == 0)
            ecam_base = *(const u64 *)(mcfg + 44);
        if (!cmdline_u64("pci_cf8", 0)) ecam_base = cmdline_u64("pci_ecam", ecam_base);
        ecam_checked = 1;
    }
    return ecam_base ? (volatile u8 *)(ecam_base + ((u64)bdf << 12) + offset) : 0;
}

const char *pci_access_method(void) { return ecam(0, 0) ? "ecam" : "cf8"; }

static void cf8_select(u32 bdf, u32 offset) { outl(0xCF8, 0x80000000U | (bdf << 8) | (offset & 0xFC)); }

u32 pci_read32(u32 bdf, u32 offset) {
    volatile u8 *p = ecam(bdf, offset);
    if (p) return *(volatile u32 *)p;
    cf8_select(bdf, offset);
    return inl(0xCFC);
}

u16 pci_read16(u32 bdf, u32 offset) { return (u16)(pci_read32(bdf, offset & ~3U) >> (8 * (offset & 2))); }
u8 pci_read8(u32 bdf, u32 offset) { return (u8)(pci_read32(bdf, offset & ~3U) >> (8 * (offset & 3))); }

void pci_write32(u32 bdf, u32 offset, u32 value) {
    volatile u8 *p = ecam(bdf, offset);
    if (p) { *(volatile u32 *)p = value; return; }
    cf8_select(bdf, offset);
    outl(0xCFC, value);
}

void pci_write16(u32 bdf, u32 offset, u16 value) {
    volatile u8 *p = ecam(bdf, offset);
    if (p) { *(volatile u16 *)p = value; return; }
    u32 word = pci_read32(bdf, offset & ~3U), shift = 8 * (offset & 2);
    pci_write32(bdf, offset & ~3U, (word & ~(0xFFFFU << shift)) | ((u32)value << shift));
}

int pci_present(u32 id) { return (id & 0xFFFF) != 0xFFFF && (id & 0xFFFF) != 0; }

int pci_find(u16 vendor, u16 device, u32 *bdf) {
    for (u32 dev = 0; dev < 32; dev++) {
        u32 id = pci_read32(PCI_BDF(0, dev, 0), 0);
        if ((id & 0xFFFF) == vendor && (id >> 16) == device) { *bdf = PCI_BDF(0, dev, 0); return 1; }
    }
    return 0;
}

int pci_next_cap(u32 bdf, int cap_id, int after) {
    if (!(pci_read16(bdf, 0x06) & 0x10)) return 0;
    int at = after ? pci_read8(bdf, (u32)after + 1) : pci_read8(bdf, 0x34);
    for (int hops = 0; at && hops < 48; hops++) {
        if (pci_read8(bdf, (u32)at) == cap_id) return at;
        at = pci_read8(bdf, (u32)at + 1);
    }
    return 0;
}

/* Where unassigned BARs go (no firmware ran): pci_mmio=0x... on the command line, else 3 GiB. */
static u64 next_bar_address;

static u64 assign_bar(u32 bdf, int bar, u32 low, int is_64bit) {
    u32 reg = 0x10 + 4 * (u32)bar;
    pci_write32(bdf, reg, 0xFFFFFFFF);                      /* size it: the read-back masks the size */
    u64 size = (u64)(~(pci_read32(bdf, reg) & ~0xFU)) + 1;
    pci_write32(bdf, reg, low);
    if (size < 16 || size > (1UL << 28)) return 0;
    if (!next_bar_address) next_bar_address = cmdline_u64("pci_mmio", 0xC0000000UL);
    u64 address = (next_bar_address + size - 1) & ~(size - 1);
    next_bar_address = address + size;
    pci_write32(bdf, reg, (u32)address | (low & 0xF));
    if (is_64bit) pci_write32(bdf, reg + 4, 0);
    return address;
}

u64 pci_bar_address(u32 bdf, int bar) {
    u32 low = pci_read32(bdf, 0x10 + 4 * (u32)bar);
    if (low & 1) return 0;                                  /* an I/O BAR */
    int is_64bit = (low & 0x6) == 0x4;
    u64 address = low & ~0xFUL;
    if (is_64bit) address |= (u64)pci_read32(bdf, 0x14 + 4 * (u32)bar) << 32;
    return address ? address : assign_bar(bdf, bar, low, is_64bit);
}

void pci_enable(u32 bdf) { pci_write16(bdf, 0x04, pci_read16(bdf, 0x04) | 0x6); }
