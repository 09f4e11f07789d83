/*
 * vmkit guest runtime: entry points, long mode, descriptor tables, interrupt stubs,
 * the ring-3 switch and the application-processor trampoline.
 *
 * Two ways in:
 *   pvh_start32   32-bit protected mode, paging off, EBX -> hvm_start_info (PVH)
 *   linux64_start 64-bit long mode, RSI -> boot_params (Linux 64-bit protocol; image offset 0x200)
 */
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS   0x1b
#define USER_CS   0x23
#define CODE32_CS 0x38
#define TRAMPOLINE_ADDR 0x8000
#define PAGE_USER_LARGE 0x87      /* present, writable, user, 2 MiB page */

    .section .text.boot32, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    movl %ebx, boot_info_ptr
    movl $1, boot_protocol            /* 1 = PVH */
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                   /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx            /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax             /* PG | PE */
    movl %eax, %cr0
    lgdt gdt_ptr
    ljmp $KERNEL_CS, $long_mode_bsp

    .section .text.entry64, "ax"
    .code64
    .global linux64_start
linux64_start:
    cli
    movq %rsi, boot_info_ptr
    movl $2, boot_protocol            /* 2 = Linux boot_params */
    movq $pml4, %rax
    movq %rax, %cr3
    lgdt gdt_ptr
    movq $bsp_stack_top, %rsp         /* the 64-bit protocol gives no stack */
    pushq $KERNEL_CS
    leaq long_mode_bsp(%rip), %rax
    pushq %rax
    lretq

    .text
long_mode_bsp:
    movw $KERNEL_DS, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $bsp_stack_top, %rsp
    call runtime_start                /* C, ring 0; never returns */
1:  hlt
    jmp 1b

/*
 * enter_user(entry, user_stack): iretq to ring 3. Port access comes from the TSS I/O
 * bitmap, not IOPL: PVM hosts clear IOPL (and set IF) on the way to ring 3.
 */
    .global enter_user
enter_user:
    pushq $USER_DS
    pushq %rsi
    pushq $0x0002                     /* reserved bit 1; IOPL 0, interrupts off */
    pushq $USER_CS
    pushq %rdi
    iretq

/* load_tables(): GDT is already loaded; load TR and IDT built by C. */
    .global load_task_register
load_task_register:
    movw $0x28, %ax
    ltr %ax
    ret

/* Interrupt stubs: push an error-code placeholder where the CPU does not, then the vector. */
    .macro stub vec
    .balign 16
    .if (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp trap_common
    .endm

    .balign 16
    .global isr_table
    .altmacro
isr_table:
    .set v, 0
    .rept 256
    stub %v
    .set v, v + 1
    .endr
    .noaltmacro

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call trap_handler
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

/* Application processors arrive here in long mode from the trampoline. */
ap_long_mode:
    movw $KERNEL_DS, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %eax
    lock xaddl %eax, ap_next_slot
    incl %eax
    movl %eax, %edi                   /* slot 1.. */
    shll $12, %eax
    leaq ap_stacks(%rax), %rsp
    call ap_main
2:  cli
    hlt
    jmp 2b

/* Real-mode trampoline, copied to TRAMPOLINE_ADDR; the SIPI vector is its page number. */
    .section .rodata
    .global trampoline_start, trampoline_end
    .code16
trampoline_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (TRAMPOLINE_ADDR + tramp_gdt_ptr - trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $CODE32_CS, $(TRAMPOLINE_ADDR + tramp32 - trampoline_start)
    .code32
tramp32:
    movw $KERNEL_DS, %ax
    movw %ax, %ds
    movw %ax, %ss
    movl $pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ljmp $KERNEL_CS, $ap_long_mode
    .balign 8
tramp_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:
    .code64

/* GDT: null, kernel code64, kernel data, user data, user code64, TSS (16 bytes), code32. */
    .data
    .balign 16
    .global gdt, gdt_tss
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF          /* 0x08 kernel code, 64-bit */
    .quad 0x00CF92000000FFFF          /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF          /* 0x18 user data, DPL 3 */
    .quad 0x00AFFA000000FFFF          /* 0x20 user code, 64-bit, DPL 3 */
gdt_tss:
    .quad 0                           /* 0x28 TSS, filled in by C */
    .quad 0
    .quad 0x00CF9A000000FFFF          /* 0x38 kernel code, 32-bit (trampoline) */
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    .global boot_info_ptr, boot_protocol, ap_next_slot
boot_info_ptr: .quad 0
boot_protocol: .long 0
ap_next_slot: .long 0

/* Identity map of the first 4 GiB with user-accessible 2 MiB pages, built at assembly time. */
    .balign 4096
    .global pml4
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 7
    .quad pd + 0x1000 + 7
    .quad pd + 0x2000 + 7
    .quad pd + 0x3000 + 7
    .fill 508, 8, 0
pd:
    .set addr, 0
    .rept 2048
    .quad addr + PAGE_USER_LARGE
    .set addr, addr + 0x200000
    .endr

    .bss
    .balign 4096
    .global ap_stacks
    .space 16384
bsp_stack_top:
ap_stacks:
    .space 4096 * 64
