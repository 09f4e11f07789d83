/* The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18): where a PVH loader enters in 32-bit mode. */
    .section .note.pvh, "a"
    .balign 4
    .long 4             /* namesz */
    .long 4             /* descsz */
    .long 18            /* type: XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32
