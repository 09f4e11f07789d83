"""The KVM system file descriptor (/dev/kvm): version, capabilities, CPUID, VM creation."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from vmkit.kvm import constants as c
from vmkit.kvm.errors import KvmError, KvmUnavailable
from vmkit.kvm.ioctl import raw_ioctl
from vmkit.kvm.structs import Cpuid2, MsrList
from vmkit.kvm.vm import VmFd

DEFAULT_DEVICE = "/dev/kvm"


class Kvm:
    """An open /dev/kvm, checked for API version and the capabilities vmkit needs."""

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        self.path = path
        self.fd = _open_device(path)
        try:
            verify_host(path, raw_ioctl(self.fd, c.KVM_GET_API_VERSION), self.check_extension)
        except BaseException:
            os.close(self.fd)
            raise
        self._vcpu_mmap_size: int | None = None

    def check_extension(self, capability: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value."""
        return max(raw_ioctl(self.fd, c.KVM_CHECK_EXTENSION, capability), 0)

    @property
    def max_vcpus(self) -> int:
        return self.check_extension(c.CAP_MAX_VCPUS) or self.check_extension(c.CAP_NR_VCPUS) or 4

    @property
    def vcpu_mmap_size(self) -> int:
        if self._vcpu_mmap_size is None:
            size = raw_ioctl(self.fd, c.KVM_GET_VCPU_MMAP_SIZE)
            if size < 0:
                raise KvmError("KVM_GET_VCPU_MMAP_SIZE", -size)
            self._vcpu_mmap_size = size
        return self._vcpu_mmap_size

    def supported_cpuid(self) -> Cpuid2:
        """KVM_GET_SUPPORTED_CPUID: the CPUID leaves this host can offer a guest."""
        cpuid = Cpuid2()
        cpuid.nent = len(cpuid.entries)
        ret = raw_ioctl(self.fd, c.KVM_GET_SUPPORTED_CPUID, cpuid)
        if ret < 0:
            raise KvmError("KVM_GET_SUPPORTED_CPUID", -ret)
        return cpuid

    def msr_index_list(self) -> list[int]:
        msrs = MsrList()
        msrs.nmsrs = len(msrs.indices)
        ret = raw_ioctl(self.fd, c.KVM_GET_MSR_INDEX_LIST, msrs)
        if ret < 0:
            raise KvmError("KVM_GET_MSR_INDEX_LIST", -ret)
        return list(msrs.indices[: msrs.nmsrs])

    def create_vm(self) -> VmFd:
        fd = raw_ioctl(self.fd, c.KVM_CREATE_VM, 0)
        if fd < 0:
            raise KvmError("KVM_CREATE_VM", -fd)
        return VmFd(fd, self)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_host(path: str, api_version: int, check_extension: Callable[[int], int]) -> None:
    """Raise KvmUnavailable unless the API version is 12 and every required capability is there."""
    if api_version != c.API_VERSION:
        raise KvmUnavailable(
            f"{path} speaks KVM API version {api_version}, vmkit needs {c.API_VERSION}"
        )
    missing = [name for cap, name in c.REQUIRED_CAPS.items() if not check_extension(cap)]
    if missing:
        raise KvmUnavailable(f"{path} lacks capabilities vmkit needs: {', '.join(missing)}")


def _open_device(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailable(
            f"{path} does not exist: this kernel has no KVM. Load the module "
            "(modprobe kvm_intel, kvm_amd or kvm_pvm) or run on a host with virtualization enabled"
        ) from None
    except PermissionError:
        raise KvmUnavailable(
            f"permission denied opening {path}: add yourself to its group "
            f"(sudo usermod -aG $(stat -c %G {path}) $USER, then log in again) or run as root"
        ) from None
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.ENODEV):
            raise KvmUnavailable(f"{path} exists but no KVM module serves it ({exc.strerror})") from None
        raise KvmUnavailable(f"cannot open {path}: {exc.strerror}") from None


