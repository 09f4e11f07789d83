"""`vmkit image build`: make an image, or reuse it when none of its inputs changed.

The image's files are written under temporary names (NAME.PID.RANDOM.tmp) and renamed into place;
the manifest comes last, so an interrupted build leaves no image that loads."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from vmkit import buildproc
from vmkit.images import initramfs, kernel, store

IMAGE_KINDS = ("linux",)


def _inputs_digest() -> str:
    h = hashlib.sha256()
    for part in kernel.inputs_digest_parts(kernel.find_source()):
        h.update(part)
    h.update(initramfs.find_busybox().read_bytes())
    h.update(initramfs.INIT_SCRIPT.read_bytes())
    h.update(initramfs.VSOCK_PROBE_SOURCE.read_bytes())
    h.update(initramfs.AGENT_SOURCE.read_bytes())
    h.update(initramfs.POWER_BUTTON_SOURCE.read_bytes())
    h.update(Path(initramfs.__file__).read_bytes())
    return h.hexdigest()


def build_image(name: str = "linux", *, jobs: int | None = None, force: bool = False,
                progress: kernel.Progress = print) -> store.Image:
    if name not in IMAGE_KINDS:
        raise store.ImageError(f"unknown image {name!r}; vmkit builds: {', '.join(IMAGE_KINDS)}")
    kernel.check_tools()
    initramfs.find_busybox()
    digest = _inputs_digest()
    path = store.images_dir() / name
    if not force:
        try:
            existing = store.load(name)
            if existing.manifest.get("inputs") == digest:
                progress(f"image {name} is up to date ({path})")
                return existing
        except store.ImageError:
            pass
    started = time.monotonic()
    path.mkdir(parents=True, exist_ok=True)
    (path / store.MANIFEST_FILE).unlink(missing_ok=True)       # incomplete until the end
    buildproc.remove_stale(path)                                # left by a vmkit killed outright
    progress("[1/2] kernel")
    release = kernel.build_kernel(store.build_dir(), path / store.KERNEL_FILE,
                                  jobs or os.cpu_count() or 1, progress)
    progress("[2/2] initramfs (busybox-static and vmkit's init)")
    initrd = initramfs.build_initramfs()
    with buildproc.replacing(path / store.INITRD_FILE) as partial:
        partial.write_bytes(initrd)
    store.save_manifest(path, {"inputs": digest, "kind": name, "kernel_release": release,
                               "kernel_patches": list(kernel.patches()),
                               "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    progress(f"built image {name} (Linux {release}) in {time.monotonic() - started:.0f} s: {path}")
    return store.load(name)
