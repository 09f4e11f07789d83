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
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MAX_NAME = 128


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


def image_path(name: str) -> Path:
    """Where the image `name` lives: a plain name, never a path that leads out of the images folder."""
    if not name or not set(name) <= NAME_CHARS or name.startswith(".") or len(name) > MAX_NAME:
        raise ImageError(f"{name!r} is not an image name (up to {MAX_NAME} letters, digits, '.', '_' and '-', "
                         "not starting with '.')")
    return images_dir() / name


def _read_manifest(path: Path) -> dict:
    """The manifest of the image folder `path`; ImageError when it is missing or damaged."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise ImageError(f"no image named {path.name!r}") from None
    except OSError as exc:
        raise ImageError(f"image {path.name!r}: cannot read {MANIFEST_FILE}: {exc.strerror}") from None
    except ValueError:                  # not JSON, or not UTF-8
        manifest = None
    if not isinstance(manifest, dict):
        raise ImageError(f"image {path.name!r} is damaged: {MANIFEST_FILE} is not a manifest; rebuild it, "
                         f"or remove it with `vmkit image rm {path.name}`")
    return manifest


def load(name: str) -> Image:
    path = image_path(name)
    if not (path / MANIFEST_FILE).is_file():
        known = ", ".join(i.name for i in list_images()) or "none; build one with `vmkit image build`"
        raise ImageError(f"no image named {name!r} (images: {known})")
    image = Image(name, path, _read_manifest(path))
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
        if (path / MANIFEST_FILE).is_file():
            try:
                manifest = _read_manifest(path)
            except ImageError:
                manifest = {}           # listed all the same, so it can be seen and removed
            found.append(Image(path.name, path, manifest))
    return found


def remove(name: str) -> None:
    path = image_path(name)
    if not path.is_dir():
        raise ImageError(f"no image named {name!r}")
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise ImageError(f"image {name!r}: cannot remove {str(path)!r}: {exc.strerror}") from None
