/* triple_fault: loads an empty IDT in ring 0 and raises an exception: the CPU shuts down. */
#include "runtime.h"

void main(void) {
    printf("triple fault next\n");
    flush();
    gate(GATE_TRIPLE_FAULT, 0, 0);
    printf("still alive after a triple fault\n");
    exit(3);
}
