/* pci_scan: lists the functions on PCI bus 0 (through ECAM when ACPI names it, else 0xCF8/0xCFC). */
#include "pci.h"

void main(void) {
    int found = 0;
    RESULT("pci_access", "%s", pci_access_method());
    for (u32 dev = 0; dev < 32; dev++) {
        u32 bdf = PCI_BDF(0, dev, 0), id = pci_read32(bdf, 0);
        if (!pci_present(id)) continue;
        u32 class = pci_read32(bdf, 0x08) >> 8;
        printf("RESULT pci.%02u=%04x:%04x class=%06x\n", dev, id & 0xFFFF, id >> 16, class);
        found++;
    }
    RESULT("pci_functions", "%d", found);
    exit(0);
}
