"""Where vmkit puts things in guest-physical memory (x86_64). One table, one place."""

from __future__ import annotations

GDT_ADDR = 0x500            # boot GDT for the 64-bit Linux entry
PVH_START_INFO_ADDR = 0x6000  # hvm_start_info, then its memmap and module list
PVH_MEMMAP_ADDR = 0x6040
PVH_MODLIST_ADDR = 0x6800
ZERO_PAGE_ADDR = 0x7000     # Linux boot_params
SETUP_DATA_ADDR = 0x8000    # setup_data chain (RNG seed)
PML4_ADDR = 0x9000          # identity map for the 64-bit entry: PML4, PDPT, 4 PDs
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000            # 4 pages: 0xB000..0xEFFF map 4 GiB with 2 MiB pages
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000
EBDA_START = 0x9FC00        # the last KiB of base memory, reserved as on every PC
ACPI_ADDR = 0xE0000         # RSDP, then the ACPI tables, below the MP table
MPTABLE_ADDR = 0xF0000      # MP floating pointer and configuration table, up to 1 MiB (254 CPUs: 5.2 KiB)
HIGH_MEMORY_START = 0x100000  # kernels load at 1 MiB
KERNEL_LOAD_ADDR = 0x100000

# Port I/O: the legacy devices' fixed ports (the ACPI power registers are in acpi.py, named by the FADT)
COM1_PORT, COM1_IRQ = 0x3F8, 4   # the console UART, as on every PC; described in the ACPI DSDT
POWER_BUTTON_GSI = 16            # the ACPI power button's Generic Event Device: an IOAPIC pin no
                                 # ISA device or PIC line shares (DSDT _SB.GED_)
I8042_PORT = 0x60                # 0x60 data, 0x64 command/status
RTC_PORT = 0x70                  # 0x70 index, 0x71 data
DEBUG_EXIT_PORT = 0xF4           # QEMU's isa-debug-exit
DEBUGCON_PORT = 0xE9             # Bochs/QEMU debug console

PCI_CONFIG_PORT = 0xCF8     # configuration mechanism #1: 0xCF8 address, 0xCFC data
PCI_MMIO_BASE = 0xC0000000  # BARs of PCI devices, 64 KiB apart; the root's window ends below ECAM
PCI_MMIO_STRIDE = 0x10000
PCI_ECAM_ADDR = 0xE0000000  # ECAM for bus 0, named in the ACPI MCFG table and reserved in e820
PCI_ECAM_SIZE = 0x100000    # 1 MiB: 32 devices x 8 functions x 4 KiB
IOAPIC_ADDR = 0xFEC00000
LAPIC_ADDR = 0xFEE00000
TSS_ADDR = 0xFFFBD000       # 3 pages KVM needs on Intel hosts (KVM_SET_TSS_ADDR)

E820_RAM = 1
E820_RESERVED = 2
