/*
 * memtouch: writes every page of usable RAM above the image with a pattern derived from its
 * address, then reads every page back. Reports pages touched and mismatches.
 */
#include "runtime.h"

#define PAGE 4096UL

static u64 pattern(u64 addr) { return addr * 0x9E3779B97F4A7C15UL ^ 0x5A5A5A5A5A5A5A5AUL; }

void main(void) {
    u64 floor = ((u64)_end + PAGE - 1) & ~(PAGE - 1), pages = 0, bad = 0;
    u64 limit = 4UL << 30;                     /* the identity map covers 4 GiB */
    for (int pass = 0; pass < 2; pass++) {
        for (int r = 0; r < machine.nr_ranges; r++) {
            if (machine.ranges[r].type != 1) continue;
            u64 lo = machine.ranges[r].base, hi = lo + machine.ranges[r].size;
            if (lo < floor) lo = floor;
            if (hi > limit) hi = limit;
            for (u64 a = lo; a + PAGE <= hi; a += PAGE) {
                volatile u64 *w = (volatile u64 *)a;
                if (pass == 0) { w[0] = pattern(a); w[PAGE / 8 - 1] = ~pattern(a); pages++; }
                else if (w[0] != pattern(a) || w[PAGE / 8 - 1] != ~pattern(a)) bad++;
            }
        }
    }
    RESULT("pages", "%lu", pages);
    RESULT("mib", "%lu", pages * PAGE >> 20);
    RESULT("mismatches", "%lu", bad);
    exit(bad ? 1 : 0);
}
