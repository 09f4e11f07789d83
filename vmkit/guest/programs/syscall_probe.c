/*
 * syscall_probe: does `syscall` from ring 3 enter ring 0? The entry point records the CS it
 * runs with and returns (sysretq from ring 0, a plain jump when it was left in ring 3).
 * Some PVM hosts jump to LSTAR without switching privilege; stock Linux userspace cannot
 * make system calls there.
 */
#include "runtime.h"

volatile u64 entry_cs;

__asm__(
    ".text\n"
    ".global probe_entry\n"
    "probe_entry:\n"
    "    movq %cs, %rax\n"
    "    movq %rax, entry_cs(%rip)\n"
    "    testb $3, %al\n"
    "    jnz 1f\n"
    "    sysretq\n"
    "1:  jmp *%rcx\n");
extern u8 probe_entry[];

void main(void) {
    gate(GATE_ENABLE_SYSCALL, (u64)probe_entry, 0);
    __asm__ volatile("syscall" ::: "rax", "rcx", "r11", "memory");
    RESULT("syscall_entry_cs", "%lx", entry_cs);
    RESULT("syscall_enters_ring0", "%d", (entry_cs & 3) == 0);
    exit(0);
}
