"""What kind of KVM this host has, and what vmkit does differently on PVM hosts."""

from __future__ import annotations

import os
from typing import Literal

HostKind = Literal["pvm", "intel", "amd", "unknown"]

PVM_NOTICE = (
    "vmkit: /dev/kvm is PVM (software virtualization): guest ring-0 code is emulated, about 1000x "
    "slower, and some instructions are unsupported; guest ring-3 code runs natively"
)

# Linux switches that keep a guest kernel away from what the PVM emulator cannot run
# (X86_FEATURE numbers as Linux 6.1 numbers them). XSAVE is cleared here rather than with
# `noxsave`, which Linux 6.1 reads but does not claim, so it also reaches init as an argument.
# Linux reads at most 127 characters of clearcpuid's value.
LINUX_PVM_CLEARCPUID = {
    "xsave": 154, "smap": 308, "smep": 295, "cx16": 141, "fsgsbase": 288, "pcid": 145, "invpcid": 298,
    "popcnt": 151, "movbe": 150, "avx": 156, "avx2": 293, "bmi1": 291, "bmi2": 296, "erms": 297,
    "fsrm": 580, "rdrand": 158, "rdseed": 306, "adx": 307, "clflushopt": 311, "clwb": 312,
    "sha_ni": 317, "aes": 153, "pclmulqdq": 129, "ssse3": 137, "sse4_1": 147, "sse4_2": 148,
    "f16c": 157, "fma": 140, "rdpid": 534, "umip": 514,
}
LINUX_PVM_ARGS = "clearcpuid=" + ",".join(str(n) for n in LINUX_PVM_CLEARCPUID.values())


def host_kind(sys_module: str = "/sys/module") -> HostKind:
    if os.path.isdir(os.path.join(sys_module, "kvm_pvm")):
        return "pvm"
    if os.path.isdir(os.path.join(sys_module, "kvm_intel")):
        return "intel"
    if os.path.isdir(os.path.join(sys_module, "kvm_amd")):
        return "amd"
    return "unknown"


def linux_cmdline_for_pvm(cmdline: str) -> str:
    """Add the PVM switches to a Linux command line, unless the user already set them.

    They go before a " -- ": what follows it is handed to init as arguments.
    """
    kernel_part, separator, init_part = f" {cmdline} ".partition(" -- ")
    present = {arg.split("=")[0] for arg in kernel_part.split()}
    extra = [arg for arg in LINUX_PVM_ARGS.split() if arg.split("=")[0] not in present]
    kernel_args = " ".join([kernel_part.strip(), *extra]).strip()
    return f"{kernel_args} -- {init_part.strip()}".strip() if separator else kernel_args
