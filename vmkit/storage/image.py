"""Creating images and describing them: what `vmkit disk create` and `vmkit disk info` will call."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmkit.storage.disk import SECTOR, Disk
from vmkit.storage.errors import BackingChainError, ImageOpenError, UnsupportedImageError
from vmkit.storage.open import FORMATS, open_disk, open_for_inspection, resolve_backing
from vmkit.storage.qcow2.create import qcow2_layout, write_new_qcow2
from vmkit.storage.qcow2.disk import Qcow2Disk
from vmkit.storage.raw import RawDisk

DEFAULT_CLUSTER_SIZE = 65536


@dataclass(frozen=True)
class ImageInfo:
    """What an image is, and what its backing chain is."""

    path: str
    format: str
    virtual_size: int
    actual_size: int                    # bytes the file occupies on the host
    cluster_size: int | None = None     # qcow2 only
    version: int | None = None          # qcow2 only
    refcount_bits: int | None = None    # qcow2 only
    dirty: bool = False
    corrupt: bool = False
    backing_file: str | None = None     # the name as the image stores it
    backing_format: str | None = None   # as the image states it; None when it was probed
    backing: ImageInfo | None = None

    def chain(self) -> list[ImageInfo]:
        """This image, then its backing file, then that one's..."""
        images: list[ImageInfo] = []
        image: ImageInfo | None = self
        while image is not None:
            images.append(image)
            image = image.backing
        return images


def _describe(disk: Disk) -> ImageInfo:
    backing = getattr(disk, "backing", None)
    below = _describe(backing) if backing is not None else None
    if isinstance(disk, Qcow2Disk):
        header = disk.header
        return ImageInfo(disk.path, "qcow2", disk.size, disk.host.allocated_bytes(), header.cluster_size,
                         header.version, header.refcount_bits, header.dirty, header.corrupt,
                         header.backing_file, header.backing_format, below)
    assert isinstance(disk, RawDisk)
    return ImageInfo(disk.path, "raw", disk.size, disk.host.allocated_bytes())


def info(path: str | os.PathLike[str], format: str | None = None, force_share: bool = False) -> ImageInfo:
    """Describe the image at `path` and its backing chain (read-only; force_share takes no lock)."""
    disk = open_for_inspection(os.fspath(path), format, force_share)
    try:
        return _describe(disk)
    finally:
        disk.close()


def create(path: str | os.PathLike[str], size: int | None, format: str = "raw", backing: str | None = None,
           backing_format: str | None = None, *, cluster_size: int = DEFAULT_CLUSTER_SIZE) -> None:
    """Create a new image (an existing file is never overwritten).

    size: bytes, a multiple of 512; for qcow2 with a backing file it may be None (the backing
    file's size). backing: the backing file's name as it will be stored (relative names are
    relative to the new image's directory); it must exist. backing_format: its format, probed when
    None, and recorded in the image either way.
    """
    path = os.fspath(path)
    if format not in FORMATS:
        raise UnsupportedImageError(f"cannot create {path!r}: unknown format {format!r} (use raw or qcow2)")
    if backing is not None and format != "qcow2":
        raise UnsupportedImageError(f"cannot create {path!r}: only qcow2 images can have a backing file")
    if backing is not None:
        try:
            below = open_disk(resolve_backing(path, backing), backing_format, read_only=True)
        except ImageOpenError as exc:
            raise BackingChainError(f"cannot create {path!r}: its backing file {backing!r} cannot be opened: "
                                    f"{exc}") from None
        try:
            backing_format = below.format
            if size is None:
                size = below.size
        finally:
            below.close()
    if size is None:
        raise ValueError(f"cannot create {path!r}: give a size")
    if size < 0 or size % SECTOR:
        raise ValueError(f"cannot create {path!r}: the size {size} must be a non-negative multiple of {SECTOR}")
    header = qcow2_layout(size, cluster_size) if format == "qcow2" else None
    if header is not None:
        header.backing_file, header.backing_format = backing, backing_format
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise ImageOpenError(f"cannot create {path!r}: it already exists (vmkit does not overwrite images)") from None
    except OSError as exc:
        raise ImageOpenError(f"cannot create {path!r}: {exc.strerror}") from None
    try:
        if header is not None:
            write_new_qcow2(fd, header)
        else:
            os.ftruncate(fd, size)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
