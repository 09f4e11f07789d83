/* PCI configuration access (ECAM when the ACPI MCFG names it, else ports 0xCF8/0xCFC) and BARs. */
#ifndef VMKIT_PCI_H
#define VMKIT_PCI_H
#include "runtime.h"

#define PCI_BDF(bus, dev, fn) (((u32)(bus) << 8) | ((u32)(dev) << 3) | (u32)(fn))

u32 pci_read32(u32 bdf, u32 offset);
u16 pci_read16(u32 bdf, u32 offset);
u8 pci_read8(u32 bdf, u32 offset);
void pci_write32(u32 bdf, u32 offset, u32 value);
void pci_write16(u32 bdf, u32 offset, u16 value);
const char *pci_access_method(void);              /* "ecam" or "cf8" */
int pci_find(u16 vendor, u16 device, u32 *bdf);   /* first match on bus 0; 0 if none */
int pci_next_cap(u32 bdf, int cap_id, int after); /* capability offset after `after` (0 = first) */
u64 pci_bar_address(u32 bdf, int bar);            /* memory BAR (assigned here if firmware did not) */
int pci_present(u32 id);                          /* a vendor:device word that is a real function */
void pci_enable(u32 bdf);                         /* memory space and bus mastering on */
#endif
