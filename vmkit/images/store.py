"""Where images live (the user's cache directory), and what each one is made of."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

from vmkit.cache import cache_root

KERNEL_FILE = "vmlinux"
INITRD_FILE = "initramfs.cpio"
MANIFEST_FILE = "manifest.json"


class ImageError(RuntimeError):
    """An image is missing or damaged."""


class Image(NamedTuple):
    name: str
    path: Path
    manifest: dict

    @property
    def kernel(self) -> Path:
        return self.path / KERNEL_FILE

    @property
    def initrd(self) -> Path:
        return self.path / INITRD_FILE

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())


def images_dir() -> Path:
    return cache_root() / "images"


def build_dir() -> Path:
    return cache_root() / "build"


def load(name: str) -> Image:
    path = images_dir() / name
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        known = ", ".join(i.name for i in list_images()) or "none; build one with `vmkit image build`"
        raise ImageError(f"no image named {name!r} (images: {known})")
    image = Image(name, path, json.loads(manifest_path.read_text()))
    for part in (image.kernel, image.initrd):
        if not part.exists():
            raise ImageError(f"image {name!r} is incomplete: {part.name} is missing; rebuild it")
    return image


def save_manifest(path: Path, manifest: dict) -> None:
    tmp = path / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(path / MANIFEST_FILE)


def list_images() -> list[Image]:
    root = images_dir()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        manifest = path / MANIFEST_FILE
        if manifest.exists():
            found.append(Image(path.name, path, json.loads(manifest.read_text())))
    return found


def remove(name: str) -> None:
    path = images_dir() / name
    if not path.is_dir():
        raise ImageError(f"no image named {name!r}")
    shutil.rmtree(path)
