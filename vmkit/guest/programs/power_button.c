/* power_button: finds the Generic Event Device (ACPI0013) in the DSDT, routes the GSI its _CRS
   names through the IOAPIC, and counts the host's power-button presses as interrupts on it. After
   `presses=N` of them (default 2) it ends with status 0 (debug exit), or with `poweroff=1` powers
   off through ACPI, as a guest that handles the button does. */
#include "runtime.h"

#define VECTOR 0x25

/* The GSI of the GED's Extended Interrupt descriptor (0x89, length 6, one interrupt), or -1. */
static int ged_gsi(void) {
    const u8 *fadt = acpi_find_table("FACP");
    if (!fadt || *(const u32 *)(fadt + 4) < 0x94) return -1;
    const u8 *dsdt = (const u8 *)*(const u64 *)(fadt + 0x8C);
    u32 len = *(const u32 *)(dsdt + 4);
    for (u32 at = 36; at + 8 <= len; at++) {
        if (memcmp(dsdt + at, "ACPI0013", 8)) continue;
        for (u32 r = at + 8; r + 9 <= len; r++)
            if (dsdt[r] == 0x89 && dsdt[r + 1] == 6 && dsdt[r + 2] == 0 && dsdt[r + 4] == 1)
                return (int)*(const u32 *)(dsdt + r + 5);
        return -1;
    }
    return -1;
}

void main(void) {
    int gsi = ged_gsi();
    if (gsi < 0 || gsi > 23) { printf("no Generic Event Device interrupt in the DSDT\n"); exit(2); }
    RESULT("gsi", "%d", gsi);
    ioapic_route(gsi, VECTOR);
    u64 seen = irq_count[VECTOR];
    u64 presses = cmdline_u64("presses", 2);
    printf("READY\n");
    for (u64 press = 1; press <= presses; press++) {
        if (!wait_irq_since(VECTOR, seen, 120UL * 3000000000UL)) { printf("timeout waiting for a press\n"); exit(3); }
        seen = irq_count[VECTOR];
        printf("PRESSED %lu\n", press);
    }
    RESULT("presses", "%lu", irq_count[VECTOR]);
    if (cmdline_u64("poweroff", 0)) {
        flush();
        if (acpi_poweroff() < 0) { printf("no ACPI sleep control register\n"); exit(4); }
        for (;;) cpu_relax();
    }
    exit(0);
}
