"""ioctl request numbers and the raw ioctl call used by every KVM wrapper.

Numbers follow the kernel's _IOC encoding (include/uapi/asm-generic/ioctl.h)
for the requests in include/uapi/linux/kvm.h.
"""

from __future__ import annotations

import ctypes

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_libc.ioctl.restype = ctypes.c_int


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


IoctlArg = int | ctypes.Structure | ctypes.Array | None


def raw_ioctl(fd: int, request: int, arg: IoctlArg = 0) -> int:
    """Call ioctl(2) through libc, releasing the GIL; return the result or -errno.

    Unlike fcntl.ioctl this neither retries on EINTR nor raises, so a vCPU
    thread can be kicked out of KVM_RUN with a signal.
    """
    if isinstance(arg, (ctypes.Structure, ctypes.Array)):
        ptr: int | None = ctypes.addressof(arg)
    else:
        ptr = arg
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        return -ctypes.get_errno()
    return ret
