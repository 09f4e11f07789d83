/* hello: the built-in default guest. Reports what it sees of its machine, then exits with 0. */
#include "runtime.h"

static u32 cmos_bcd(u8 reg) {
    outb(0x70, reg);
    u8 v = inb(0x71);
    return (v >> 4) * 10 + (v & 15);
}

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
    RESULT("rtc_date", "%u%02u-%02u-%02u", cmos_bcd(0x32), cmos_bcd(0x09), cmos_bcd(0x08), cmos_bcd(0x07));
    exit(0);
}
