"""Errors from loading a guest kernel."""

from __future__ import annotations


class BootError(Exception):
    """The guest cannot be booted as configured."""


class KernelFormatError(BootError):
    """The kernel file is not a bzImage, an ELF vmlinux or a PVH ELF, or is damaged."""


class InitrdTooLarge(BootError):
    """The initrd does not fit in guest memory where the kernel can reach it."""


class NotEnoughMemory(BootError):
    """Guest memory is too small for the kernel or the boot structures."""


class CommandLineTooLong(BootError):
    """The kernel command line is longer than the kernel accepts."""
