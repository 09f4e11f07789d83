"""Build vmkit's microVM kernel from Debian's linux-source package.

Steps: extract the source tarball (once per source version), apply vmkit's patches (patches/),
`make tinyconfig`, merge microvm.config, `make olddefconfig`, check every option took,
`make vmlinux`. The result boots through PVH straight from the ELF vmlinux.

Every command runs as a process group that an interruption kills whole (vmkit.buildproc); the
extraction works in an owned NAME.PID.RANDOM.partial directory, and a patch is applied whole or
not at all (a SIGKILL in the middle of one makes the next build extract the tree again).
"""

from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import signal
import tarfile
from collections.abc import Callable
from pathlib import Path

from vmkit import buildproc

CONFIG_FRAGMENT = Path(__file__).with_name("microvm.config")
PATCHES_DIR = Path(__file__).with_name("patches")
APPLIED_PATCHES = ".vmkit-patches"     # in the source tree: a copy of each patch applied there
PATCHING = ".vmkit-patching"           # in the source tree while a patch is being applied
# Makes the system calls of user programs on hosts where `syscall` does not leave ring 3 (PVM).
SYSCALL_PATCH = "0001-x86-mm-finish-a-syscall-left-in-user-mode.patch"
SOURCE_GLOB = "/usr/src/linux-source-*.tar.xz"
REQUIRED_TOOLS = {"make": "make", "gcc": "gcc", "bc": "bc", "bison": "bison", "flex": "flex",
                  "ld": "binutils", "patch": "patch"}
REQUIRED_HEADERS = {"/usr/include/gelf.h": "libelf-dev"}

Progress = Callable[[str], None]
# make, on SIGTERM, stops its jobs and deletes the targets they left half-written; SIGKILL would
# leave both. So SIGTERM is what make gets when vmkit dies, and it gets time to finish with it.
MAKE_DEATH_SIGNAL = signal.SIGTERM
MAKE_GRACE_S = 10.0


class KernelBuildError(RuntimeError):
    """The kernel cannot be built: a package is missing, or a build step failed."""


def find_source() -> Path:
    found = sorted(glob.glob(SOURCE_GLOB))
    if not found:
        raise KernelBuildError(
            "no Linux source found at /usr/src/linux-source-*.tar.xz: apt-get install linux-source-6.1")
    return Path(found[-1])


def check_tools() -> None:
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None}
                     | {pkg for header, pkg in REQUIRED_HEADERS.items() if not os.path.exists(header)})
    if missing:
        raise KernelBuildError(f"building the kernel needs: apt-get install {' '.join(missing)}")


def patches() -> dict[str, bytes]:
    """vmkit's kernel patches by file name, in the order they apply."""
    return {path.name: path.read_bytes() for path in sorted(PATCHES_DIR.glob("*.patch"))}


def inputs_digest_parts(source: Path) -> list[bytes]:
    """What the kernel depends on: the source package, the patches, the configuration, the compiler."""
    info = source.stat()
    gcc = buildproc.run(["gcc", "--version"]).stdout
    return [f"{source.name}:{info.st_size}:{int(info.st_mtime)}".encode(), *patches().values(),
            CONFIG_FRAGMENT.read_bytes(), gcc]


def _run(command: list[str], cwd: Path, what: str, progress: Progress,
         count_pattern: re.Pattern | None = None) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=30)
    compiled = 0

    def line(text: str) -> None:
        nonlocal compiled
        tail.append(text.rstrip())
        if count_pattern and count_pattern.match(text):
            compiled += 1
            if compiled % 100 == 0:
                progress(f"  {what}: {compiled} files compiled")

    if buildproc.stream(command, line, cwd=cwd, grace_s=MAKE_GRACE_S, death_signal=MAKE_DEATH_SIGNAL) != 0:
        raise KernelBuildError(f"{what} failed ({' '.join(command)}):\n" + "\n".join(tail))


def _extract(source: Path, build_root: Path, progress: Progress) -> Path:
    tree = build_root / source.name.removesuffix(".tar.xz")
    if (tree / "Makefile").exists() and not (tree / PATCHING).exists():
        return tree
    build_root.mkdir(parents=True, exist_ok=True)
    buildproc.remove_stale(build_root, ".partial")               # left by a vmkit killed outright
    shutil.rmtree(build_root / (tree.name + ".partial"), ignore_errors=True)   # by older vmkits
    if tree.exists():
        progress(f"{tree.name} was left half-patched (or incomplete): extracting it again")
        buildproc.remove_tree(tree, ".partial")
    progress(f"extracting {source.name} (about 1.4 GB unpacked)")
    with buildproc.owned_tempdir(build_root, tree.name, ".partial") as partial:
        with tarfile.open(source) as archive:
            archive.extractall(partial, filter="tar")
        next(partial.iterdir()).rename(tree)
    return tree


def _patch(tree: Path, name: str, text: bytes, *, reverse: bool, record: Path) -> None:
    """Apply (or revert) one patch and update its copy in `record`: checked with --dry-run first,
    so a patch that does not fit leaves the tree as it was; then applied with the stop signals
    held for the few milliseconds it takes, so an interruption cannot split it. Only a SIGKILL
    can, and then the PATCHING mark stays: the next build extracts the tree again."""
    command = ["patch", "-p1", "--batch", "--no-backup-if-mismatch", "--reject-file=-",
               "--reverse" if reverse else "--forward"]
    what = "reverting" if reverse else "applying"

    def run(*extra: str) -> None:
        done = buildproc.run([*command, *extra], cwd=tree, input=text)
        if done.returncode != 0:
            raise KernelBuildError(f"{what} kernel patch {name} failed:\n"
                                   + (done.stdout + done.stderr).decode(errors="replace"))

    run("--dry-run")
    with buildproc.signals_held():
        (tree / PATCHING).touch()
        run()
        if reverse:
            (record / name).unlink()
        else:
            (record / name).write_bytes(text)
        (tree / PATCHING).unlink()


def _apply_patches(tree: Path, progress: Progress) -> None:
    """Bring the tree to exactly vmkit's current patches: revert the ones applied before that
    changed or went away, apply the new ones. A copy of each applied patch is kept in the tree."""
    wanted = patches()
    record = tree / APPLIED_PATCHES
    record.mkdir(exist_ok=True)
    applied = {path.name: path.read_bytes() for path in sorted(record.glob("*.patch"))}
    if applied == wanted:
        return
    for name in reversed(applied):
        _patch(tree, name, applied[name], reverse=True, record=record)
    for name, text in wanted.items():
        progress(f"applying {name}")
        _patch(tree, name, text, reverse=False, record=record)


def _verify_config(tree: Path) -> None:
    """Every option of the fragment must have taken: set ones set, unset ones not set."""
    config = set((tree / ".config").read_text().splitlines())
    fragment = CONFIG_FRAGMENT.read_text().splitlines()
    dropped = [line for line in fragment if line.startswith("CONFIG_") and line not in config]
    forced = [line.split()[1] for line in fragment
              if line.startswith("# CONFIG_") and line.endswith(" is not set") and f"{line.split()[1]}=y" in config]
    if dropped or forced:
        raise KernelBuildError(
            "kernel options that did not take (unmet dependencies, or selected by others): "
            + ", ".join(dropped + [f"{name} still set" for name in forced]))


def build_kernel(build_root: Path, output: Path, jobs: int, progress: Progress) -> str:
    """Build vmlinux into `output`; returns the kernel release string."""
    check_tools()
    source = find_source()
    tree = _extract(source, build_root, progress)
    _apply_patches(tree, progress)
    progress("configuring: tinyconfig + vmkit microvm.config")
    _run(["make", "tinyconfig"], tree, "make tinyconfig", progress)
    for left in [*tree.glob(".tmp.config.*"), *tree.glob(".merge_tmp.config.*")]:
        left.unlink()                 # merge_config.sh's temporary files, if one was killed outright
    _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(CONFIG_FRAGMENT)], tree, "merge_config", progress)
    _run(["make", "olddefconfig"], tree, "make olddefconfig", progress)
    _verify_config(tree)
    progress(f"compiling vmlinux with {jobs} jobs (a few minutes on 2 cores)")
    _run(["make", f"-j{jobs}", "vmlinux"], tree, "make vmlinux", progress, re.compile(r"\s+CC\s"))
    with buildproc.replacing(output) as partial:
        shutil.copyfile(tree / "vmlinux", partial)
    release = buildproc.run(["make", "-s", "kernelrelease"], cwd=tree,
                            grace_s=MAKE_GRACE_S, death_signal=MAKE_DEATH_SIGNAL)
    return release.stdout.decode(errors="replace").strip()
