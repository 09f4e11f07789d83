/*
 * ring0_insn: instructions in ring 0 that PVM's emulator cannot run: int3 and fwait, which
 * vmkit completes itself, then popcnt, which it cannot.
 */
#include "runtime.h"

void main(void) {
    u64 bp = gate(GATE_RING0_INT3, 0, 0);
    RESULT("breakpoints", "%lu", bp);

    RESULT("x87_errors_idle", "%lu", gate(GATE_RING0_FWAIT, 0, 0));   /* nothing pending: a no-op */
    /* 0/0 with the invalid-operation exception unmasked, natively in ring 3: the error stays
     * pending until the next waiting x87 instruction, the fwait in ring 0, raises #MF. */
    u16 control = 0x037E;
    __asm__ volatile("fninit; fldcw %0; fldz; fldz; fdivrp" :: "m"(control));
    RESULT("x87_errors_pending", "%lu", gate(GATE_RING0_FWAIT, 0, 0));
    __asm__ volatile("fninit");

    u64 bits = gate(GATE_RING0_POPCNT, 0xF0F0UL, 0);
    RESULT("popcnt", "%lu", bits);
    exit(0);
}
