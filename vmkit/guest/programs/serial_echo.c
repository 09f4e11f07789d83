/* serial_echo: reads one line from COM1 with receive interrupts (IRQ 4 via the IOAPIC), echoes it. */
#include "runtime.h"

#define COM1 0x3F8
#define VECTOR 0x24

void main(void) {
    char buf[128];
    int n = 0;
    ioapic_route(4, VECTOR);
    outb(COM1 + 1, 0x01);                   /* IER: received-data interrupt */
    printf("READY\n");
    while (n < (int)sizeof(buf) - 1) {
        if (!(inb(COM1 + 5) & 1)) {         /* LSR.DR clear: wait for the interrupt */
            if (!wait_irq(VECTOR, 60UL * 3000000000UL)) { printf("timeout waiting for input\n"); exit(2); }
            continue;
        }
        char c = (char)inb(COM1);
        if (c == '\n' || c == '\r') break;
        buf[n++] = c;
    }
    buf[n] = 0;
    printf("ECHO %s\n", buf);
    RESULT("irqs", "%lu", irq_count[VECTOR]);
    exit(0);
}
