/*
 * pio_loop: `iterations` port-I/O round trips (a read of port 0x80, which no device claims).
 * Each one is an exit to the VMM and back. The host times runs of different lengths.
 */
#include "runtime.h"

void main(void) {
    u64 n = cmdline_u64("iterations", 100000);
    u64 start = rdtsc();
    for (u64 i = 0; i < n; i++) (void)inb(0x80);
    u64 cycles = rdtsc() - start;
    RESULT("iterations", "%lu", n);
    RESULT("tsc_cycles_per_iteration", "%lu", n ? cycles / n : 0);
    exit(0);
}
