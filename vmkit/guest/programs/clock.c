/* clock: the TSC frequency and a timed spin of `ms` milliseconds (default 200) by the TSC clock. */
#include "runtime.h"

void main(void) {
    u64 hz = tsc_hz();
    RESULT("tsc_hz", "%lu", hz);
    RESULT("tsc_hz_source", "%s", tsc_hz_source());
    u64 ms = cmdline_u64("ms", 200);
    printf("SPIN START\n");
    flush();
    u64 end = now_ns() + ms * 1000000UL;
    while (now_ns() < end) cpu_relax();
    printf("SPIN END\n");
    exit(0);
}
