"""x86_64 specifics: boot protocols, page tables, GDT, e820, MP table, CPUID and MSRs."""
