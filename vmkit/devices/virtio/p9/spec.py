"""The `--share HOSTDIR[,tag=TAG][,rw]` option: checked before any VM exists, opened when it is built."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from vmkit.devices.virtio.p9 import fs
from vmkit.devices.virtio.p9.device import MAX_TAG_BYTES, VirtioP9

TAG_PATTERN = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_TAG_BYTES}}}")
USAGE = "--share HOSTDIR[,tag=TAG][,rw]"


class ShareOptionError(ValueError):
    """A --share value that cannot be used; the message names the option and the bad part."""


@dataclass(frozen=True)
class ShareSpec:
    path: str
    tag: str
    writable: bool = False
    index: int = 0

    def __str__(self) -> str:
        return f"--share {self.path}"

    def open(self) -> VirtioP9:
        """Open the directory once (O_PATH): every name the guest uses is resolved beneath this fd.
        Raises OSError (the builder names the option and path) when it is not a directory."""
        fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not fs.openat2_works(fd):
                raise OSError(errno.ENOSYS, "shared folders need openat2 (Linux 5.6 or later) on the host")
            return VirtioP9(fd, self.tag, self.writable, label=f"virtio-9p{self.index}")
        except BaseException:
            os.close(fd)
            raise


def parse_option(value: str, index: int) -> ShareSpec:
    """Read one --share value; the tag defaults to share<index>."""
    path, *options = value.split(",")
    if not path:
        raise ShareOptionError(f"--share {value!r}: the host directory is missing ({USAGE})")
    tag, writable = f"share{index}", False
    for option in options:
        key, equals, text = option.partition("=")
        if key == "rw" and not equals:
            writable = True
        elif key == "ro" and not equals:
            writable = False
        elif key == "tag" and equals:
            if not TAG_PATTERN.fullmatch(text):
                raise ShareOptionError(f"--share {value!r}: tag={text!r} is not 1..{MAX_TAG_BYTES} letters, "
                                       "digits, '_', '-' or '.'")
            tag = text
        else:
            raise ShareOptionError(f"--share {value!r}: unknown option {option!r} (tag=TAG, rw, ro)")
    if not os.path.isdir(path):
        problem = "does not exist" if not os.path.exists(path) else "is not a directory"
        raise ShareOptionError(f"--share {value!r}: {path} {problem}")
    return ShareSpec(path, tag, writable, index)


def check_together(specs: Sequence[ShareSpec]) -> None:
    """Each share's tag names one share: the guest mounts by tag."""
    seen: dict[str, ShareSpec] = {}
    for spec in specs:
        if spec.tag in seen:
            raise ShareOptionError(f"{spec}: tag {spec.tag!r} is already the tag of {seen[spec.tag]} "
                                   "(give each share its own tag=)")
        seen[spec.tag] = spec
