/* idle: prints READY, then halts until console input arrives (COM1 receive interrupt, IRQ 4 via the
   IOAPIC), forever: it burns no CPU while nothing is typed. A 'q' ends it with status 0; other bytes
   are read and dropped. Used to hold many VMs at once (bench/density.py). */
#include "runtime.h"

#define COM1 0x3F8
#define VECTOR 0x24

void main(void) {
    ioapic_route(4, VECTOR);
    outb(COM1 + 1, 0x01);                   /* IER: received-data interrupt */
    printf("READY\n");
    for (;;) {
        u64 seen = irq_count[VECTOR];
        while (inb(COM1 + 5) & 1)           /* LSR.DR: a byte is waiting */
            if ((char)inb(COM1) == 'q') exit(0);
        gate(GATE_WAIT_IRQ_SINCE, VECTOR, seen);
    }
}
