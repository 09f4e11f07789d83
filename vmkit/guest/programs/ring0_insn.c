/* ring0_insn: runs int3, then popcnt, in ring 0 (both are outside what PVM's emulator supports). */
#include "runtime.h"

void main(void) {
    u64 bp = gate(GATE_RING0_INT3, 0, 0);
    RESULT("breakpoints", "%lu", bp);
    u64 bits = gate(GATE_RING0_POPCNT, 0xF0F0UL, 0);
    RESULT("popcnt", "%lu", bits);
    exit(0);
}
