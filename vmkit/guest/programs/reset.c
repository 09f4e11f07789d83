/* reset: asks the i8042 keyboard controller to pulse the CPU reset line (a reboot). */
#include "runtime.h"

void main(void) {
    printf("resetting through the i8042\n");
    flush();
    outb(0x64, 0xFE);
    for (u64 end = rdtsc() + 30000000000UL; rdtsc() < end;) cpu_relax();
    printf("no reset happened\n");
    exit(3);
}
