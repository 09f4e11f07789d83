/* smp: every vCPU checks in; reports how many and their APIC IDs in check-in order. */
#include "runtime.h"

void main(void) {
    RESULT("cpus_expected", "%d", machine.cpus_in_tables);
    RESULT("cpus_online", "%u", cpus_online);
    printf("RESULT apic_ids=");
    for (u32 i = 0; i < cpus_online && i < MAX_CPUS; i++) printf(i ? ",%u" : "%u", apic_ids[i]);
    printf("\n");
    exit(cpus_online == (u32)machine.cpus_in_tables ? 0 : 1);
}
