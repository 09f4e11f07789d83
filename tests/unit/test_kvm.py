"""The KVM layer: ioctl encoding, struct layouts, start-up checks and their messages."""

import ctypes
import errno
import os

import pytest

from vmkit.kvm import Kvm, KvmUnavailable
from vmkit.kvm import constants as c
from vmkit.kvm import structs as s
from vmkit.kvm.exits import EmulationFailure, IoOut, MmioWrite, SystemEvent, decode_exit
from vmkit.kvm.system import _open_device, verify_host


def test_ioctl_numbers_match_the_kernel_headers():
    # Values from include/uapi/linux/kvm.h as compiled for x86_64.
    assert c.KVM_GET_API_VERSION == 0xAE00
    assert c.KVM_CREATE_VM == 0xAE01
    assert c.KVM_RUN == 0xAE80
    assert c.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert c.KVM_GET_REGS == 0x8090AE81
    assert c.KVM_SET_SREGS == 0x4138AE84
    assert c.KVM_SET_CPUID2 == 0x4008AE90
    assert c.KVM_SET_VCPU_EVENTS == 0x4040AEA0
    assert c.KVM_GET_FPU == 0x81A0AE8C


def test_struct_sizes_match_the_kernel_abi():
    assert ctypes.sizeof(s.Regs) == 144
    assert ctypes.sizeof(s.Sregs) == 312
    assert ctypes.sizeof(s.UserspaceMemoryRegion) == 32
    assert ctypes.sizeof(s.VcpuEvents) == 64
    assert ctypes.sizeof(s.Fpu) == 416
    assert s.KvmRun.exit.offset == 32


def test_missing_device_says_how_to_get_kvm(tmp_path):
    with pytest.raises(KvmUnavailable, match="does not exist.*modprobe"):
        Kvm(str(tmp_path / "kvm"))


def test_permission_denied_says_how_to_fix(monkeypatch):
    def deny(path, flags):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(KvmUnavailable, match="permission denied.*usermod -aG"):
        _open_device("/dev/kvm")


def test_wrong_api_version_is_named():
    with pytest.raises(KvmUnavailable, match="API version 11, vmkit needs 12"):
        verify_host("/dev/kvm", 11, lambda cap: 1)


def test_missing_capability_is_named():
    with pytest.raises(KvmUnavailable, match="KVM_CAP_PIT2"):
        verify_host("/dev/kvm", 12, lambda cap: 0 if cap == c.CAP_PIT2 else 1)


def test_real_host_passes_the_checks():
    with Kvm() as kvm:
        assert kvm.max_vcpus >= 1
        assert kvm.supported_cpuid().nent > 0


def _run_page(reason: int) -> s.KvmRun:
    run = s.KvmRun()
    run.exit_reason = reason
    return run


def test_decode_io_and_mmio_exits():
    run = _run_page(c.EXIT_IO)
    run.exit.io.direction, run.exit.io.size, run.exit.io.port, run.exit.io.count = 1, 1, 0x3F8, 5
    run.exit.io.data_offset = 4096
    assert decode_exit(run) == IoOut(0x3F8, 1, 5, 4096)
    run = _run_page(c.EXIT_MMIO)
    run.exit.mmio.phys_addr, run.exit.mmio.len, run.exit.mmio.is_write = 0xD0000000, 4, 1
    run.exit.mmio.data[:4] = [1, 2, 3, 4]
    assert decode_exit(run) == MmioWrite(0xD0000000, b"\x01\x02\x03\x04")


def test_decode_system_event_and_emulation_failure():
    run = _run_page(c.EXIT_SYSTEM_EVENT)
    run.exit.system_event.type = c.SYSTEM_EVENT_RESET
    assert decode_exit(run) == SystemEvent("reset", c.SYSTEM_EVENT_RESET)
    run = _run_page(c.EXIT_INTERNAL_ERROR)
    internal = run.exit.internal
    internal.suberror, internal.ndata = c.INTERNAL_ERROR_EMULATION, 4
    internal.data[0] = c.INTERNAL_ERROR_FLAG_INSTRUCTION_BYTES
    raw = (ctypes.c_uint8 * 16).from_address(ctypes.addressof(internal) + 16)
    raw[0], raw[1], raw[2] = 2, 0x0F, 0x0B
    assert decode_exit(run) == EmulationFailure(b"\x0f\x0b")

