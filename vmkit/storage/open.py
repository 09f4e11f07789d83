"""open_disk: open an image of any supported format, with its backing chain, locked.

What is trusted, and what is not
--------------------------------
Trusted: the image file the user names, and the backing chain as that file describes it. A
qcow2 image names its backing file by path; vmkit opens that path, read-only, as the user who runs
it. That is QEMU's model too, and it means an image is as powerful as a command line: an image
from someone else can name any host file the user can read (/etc/shadow, ~/.ssh/id_rsa) as its
backing file, and the guest then reads that file. Open images you did not make with
`follow_backing=False` (a backing file is then refused), or inspect them with `info()` first.

Not trusted: the guest. Everything it controls is checked: request offsets and lengths against
the disk size (DiskRangeError), writes against read_only. Guest data never becomes metadata: the
only place a guest's bytes could be taken for a format header is the first sector of a raw disk
whose format was guessed, and the probe guard refuses such writes (vmkit.storage.probe).

Not trusted either: the bytes of the image file, in the sense that a damaged or hostile image must
fail cleanly. The qcow2 header, the L1 table and the refcount table are checked at open and each
L2 table when it is first read; a bad field is an ImageError naming it, never a wrong read, an
unbounded allocation or a crash. Backing chains are followed at most MAX_BACKING_DEPTH deep, and a
file that appears twice in a chain (by device and inode, whatever its names) is a loop.

Relative backing names are resolved against the directory of the image that names them (as QEMU
does), not the current directory. The backing file's format comes from the image's backing-format
extension when present, and is probed otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmkit.storage.disk import CACHE_MODES, CacheMode, Disk
from vmkit.storage.errors import BackingChainError, ImageCorruptError, ImageOpenError, UnsupportedImageError
from vmkit.storage.hostfile import open_host_file
from vmkit.storage.locking import lock_image
from vmkit.storage.probe import PROBE_BYTES, looks_like_image, probe_format
from vmkit.storage.qcow2.disk import DEFAULT_CACHE_BYTES
from vmkit.storage.qcow2.opener import BackingOpener, open_qcow2
from vmkit.storage.raw import RawDisk

FORMATS = ("raw", "qcow2")
MAX_BACKING_DEPTH = 16


@dataclass(frozen=True)
class _Options:
    cache: CacheMode
    follow_backing: bool
    force_share: bool
    inspect: bool = False
    cache_bytes: int = DEFAULT_CACHE_BYTES


def open_disk(path: str | os.PathLike[str], format: str | None = None, read_only: bool = False,
              cache: CacheMode = "writeback", *, follow_backing: bool = True, force_share: bool = False,
              metadata_cache_bytes: int = DEFAULT_CACHE_BYTES) -> Disk:
    """Open the image at `path` as a Disk.

    format: "raw", "qcow2", or None to probe (qcow2 by its magic, raw otherwise; a probed raw disk
    refuses first-sector writes that would make it look like an image format). cache: "writeback"
    (flush = fdatasync), "none" (O_DIRECT) or "unsafe" (flush does nothing). follow_backing=False
    refuses images with a backing file. force_share=True takes no lock (like qemu-img -U): only
    for read-only opens. metadata_cache_bytes bounds the qcow2 L2/refcount cache.
    """
    if format is not None and format not in FORMATS:
        raise UnsupportedImageError(f"image {os.fspath(path)!r}: unknown format {format!r} (use raw or qcow2)")
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r} (use one of {', '.join(CACHE_MODES)})")
    if force_share and not read_only:
        raise ValueError("force_share is only for read-only opens")
    options = _Options(cache, follow_backing, force_share, cache_bytes=metadata_cache_bytes)
    return _open(os.fspath(path), format, read_only, options, ())


def _open(path: str, format: str | None, read_only: bool, options: _Options,
          above: tuple[tuple[str, tuple[int, int]], ...]) -> Disk:
    """Open one image of a chain; `above` lists the images that have this one as backing."""
    host = open_host_file(path, writable=not read_only, direct=options.cache == "none")
    try:
        identity = host.identity()
        names = [name for name, _ in above]
        if any(other == identity for _, other in above):
            raise BackingChainError(f"backing chain loop: {' -> '.join([*names, path])}")
        if len(above) > MAX_BACKING_DEPTH:
            raise BackingChainError(f"backing chain of {names[0]} is deeper than {MAX_BACKING_DEPTH} files "
                                    f"(reached {path})")
        if not options.force_share:
            lock_image(host.fd, path, writable=not read_only)
        head = bytes(host.pread(0, PROBE_BYTES))
        detected = probe_format(head)
        if format == "qcow2" and detected != "qcow2":
            raise ImageCorruptError(f"{path}: not a qcow2 image (no qcow2 magic at offset 0)")
        other = looks_like_image(head) if format is None and detected == "raw" else None
        if other is not None:
            raise UnsupportedImageError(f"{path}: it looks like a {other} image, which vmkit does not read; "
                                        f"if it really is a raw disk, open it with format='raw'")
        if (format or detected) == "raw":
            return RawDisk(host, read_only, options.cache, probed=format is None)
        opener = _backing_opener(path, options, (*above, (path, identity))) if options.follow_backing else None
        return open_qcow2(host, read_only, options.cache, opener, inspect=options.inspect,
                          cache_bytes=options.cache_bytes)
    except BaseException:
        host.close()
        raise


def resolve_backing(image_path: str, name: str) -> str:
    """Where the backing file `name`, named by the image at `image_path`, is."""
    if name.startswith("json:"):
        raise UnsupportedImageError(f"{image_path}: its backing file is given as {name[:40]!r}...: vmkit does "
                                    f"not support json: backing specifications")
    if os.path.isabs(name):
        return name
    return os.path.join(os.path.dirname(image_path), name)


def _backing_opener(image_path: str, options: _Options,
                    above: tuple[tuple[str, tuple[int, int]], ...]) -> BackingOpener:
    def open_backing(name: str, format: str | None) -> Disk:
        resolved = resolve_backing(image_path, name)
        try:
            return _open(resolved, format, True, options, above)
        except ImageOpenError as exc:
            raise BackingChainError(f"{image_path}: its backing file {name!r} cannot be opened: {exc}") from None
    return open_backing



def open_for_inspection(path: str, format: str | None, force_share: bool) -> Disk:
    """A read-only open that also accepts images marked corrupt, to describe them (info())."""
    options = _Options("writeback", follow_backing=True, force_share=force_share, inspect=True)
    return _open(path, format, True, options, ())
