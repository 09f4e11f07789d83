/* hello: the built-in default guest. Reports what it sees of its machine, then exits with 0. */
#include "runtime.h"

void main(void) {
    printf("vmkit guest: hello from ring 3\n");
    RESULT("protocol", "%s", machine.boot_protocol == 1 ? "pvh" : "linux64");
    RESULT("cpus_in_tables", "%d", machine.cpus_in_tables);
    RESULT("cpu_table", "%s", machine.cpu_table);
    RESULT("cpus_in_madt", "%d", machine.cpus_in_madt);
    RESULT("cpus_online", "%u", cpus_online);
    RESULT("ram_mib", "%lu", machine.ram_bytes >> 20);
    for (int i = 0; i < machine.nr_ranges; i++)
        printf("memory: [%lx, %lx) type %u\n", machine.ranges[i].base,
               machine.ranges[i].base + machine.ranges[i].size, machine.ranges[i].type);
    RESULT("cmdline", "%s", machine.cmdline);
    exit(0);
}
