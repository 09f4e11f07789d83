/*
 * mmio_loop: `iterations` MMIO round trips (a 32-bit read in the MMIO hole where nothing is
 * mapped, 0xd0000000). Each one is an exit to the VMM and back.
 */
#include "runtime.h"

#define UNBACKED_MMIO 0xD0000000UL

void main(void) {
    u64 n = cmdline_u64("iterations", 100000);
    u32 seen = 0;
    u64 start = rdtsc();
    for (u64 i = 0; i < n; i++) seen |= mmio_read32(UNBACKED_MMIO);
    u64 cycles = rdtsc() - start;
    RESULT("iterations", "%lu", n);
    RESULT("read_value", "%x", seen);
    RESULT("tsc_cycles_per_iteration", "%lu", n ? cycles / n : 0);
    exit(0);
}
