/* poweroff: turns the machine off the ACPI way, through the FADT's sleep control register. */
#include "runtime.h"

void main(void) {
    printf("powering off through ACPI\n");
    flush();
    if (acpi_poweroff() < 0) { printf("no ACPI sleep control register\n"); exit(3); }
    for (u64 end = rdtsc() + 30000000000UL; rdtsc() < end;) cpu_relax();
    printf("still running after power-off\n");
    exit(4);
}
