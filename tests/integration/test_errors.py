"""Every way `vmkit` can be misused gets one clear line and exit status 125; a run that must go on
ends with the guest's status; a stop signal at any moment ends it with 128 + n.

The inputs are searched systematically: every option of `vmkit run` with bad values, the other
commands, malformed kernels of every supported format (built here with struct), random bytes and
random header mutations with fixed seeds, files that are not files, closed and full stdio, and stop
signals at random moments. Whatever the input, vmkit never shows a traceback and never exits with
the internal-error status 70.
"""

import os
import random
import signal
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Finished, vmkit_command

START_ERROR = 125
INTERNAL_ERROR = 70
GUEST_SUCCESS = 1                       # the test guests write 0 to the debug-exit port
STOP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
TIMEOUT = 30                            # generous: a hang fails the test instead of the whole run
JOBS = min(8, 2 * (os.cpu_count() or 1))  # vmkit processes at a time, for the tables of refusals


def run(*args, env: dict | None = None, timeout: float = TIMEOUT, **kwargs) -> Finished:
    """`vmkit ARGS` (str or bytes, so arguments that are not UTF-8 can be passed), stdin empty."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run(vmkit_command(*args), capture_output=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env}, **kwargs)
    return Finished(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def run_all(commands: list[tuple[str, ...]]) -> dict[tuple[str, ...], Finished]:
    """Each command's `run` result, several at a time: a table of cases that each start a vmkit
    process costs a share of the cores, not the sum of its start-ups. Each case is still its own test."""
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        futures = {args: pool.submit(run, *args) for args in commands}
        return {args: future.result() for args, future in futures.items()}


def shell(redirections: str, *args: str) -> Finished:
    """`vmkit ARGS` started by sh with `redirections` (closing or redirecting stdio, as a user can)."""
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirections}', "sh", *vmkit_command(*args)],
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    return Finished(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def assert_sane(done: Finished) -> None:
    """What holds for every input: no traceback, no internal error, not killed by a signal."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode != INTERNAL_ERROR, done.stderr
    assert done.returncode >= 0, f"killed by signal {-done.returncode}"


def assert_refused(done: Finished, *names: str) -> None:
    """Status 125 and exactly one line, "vmkit: error: ...", that names each of `names`."""
    assert_sane(done)
    assert done.returncode == START_ERROR, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vmkit: error: "), done.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


def assert_guest_ended(done: Finished, status: int = GUEST_SUCCESS) -> None:
    assert_sane(done)
    assert done.returncode == status, done.stderr


# --- options of `vmkit run` -------------------------------------------------------------------------

BAD_OPTIONS = [
    (["--kernel", "/nonexistent/vmlinux"], "kernel '/nonexistent/vmlinux' does not exist"),
    (["--kernel", "/etc/hostname"], "not a bzImage, an ELF vmlinux or a PVH ELF kernel"),
    (["--kernel", "/tmp"], "is a directory"),
    (["--memory", "1"], "memory: 1 MiB is out of range"),
    (["--cpus", "300"], "vcpus: 300 is out of range"),
    (["--guest", "nope"], "no guest program 'nope'"),
    (["--initrd", "/nonexistent"], "initrd '/nonexistent' does not exist"),
    (["--console", "/nonexistent/dir/log"], "--console '/nonexistent/dir/log' does not exist"),
    (["--kernel", ""], "kernel: the path is empty"),
    (["--kernel", "/dev/zero"], "kernel '/dev/zero' is a character device"),
    (["--kernel", "/dev/null"], "kernel '/dev/null' is a character device"),
    (["--guest", ""], "no guest program ''"),
    (["--guest", "../hello"], "no guest program '../hello'"),
    (["--image", "../../etc"], "--image: '../../etc' is not an image name"),
    (["--image", ""], "--image: '' is not an image name"),
    (["--initrd", ""], "initrd: the path is empty"),
    (["--initrd", "/tmp"], "initrd '/tmp' is a directory"),
    (["--initrd", "/dev/zero"], "initrd '/dev/zero' is a character device"),
    (["--cmdline", "x" * 70000], "cmdline: it is 70000 bytes; the limit is 65535"),
    (["--cmdline", "x" * 65536], "cmdline: it is 65536 bytes; the limit is 65535"),
    (["--cpus", "255"], "vcpus: 255 is out of range"),
    (["--cpus", str(10**9)], f"vcpus: {10**9} is out of range"),
    (["--memory", str(10**9)], f"memory: {10**9} MiB is out of range"),
    (["--memory", str(2**20 + 1)], f"memory: {2**20 + 1} MiB is out of range"),
    (["--console", ""], "--console: the path is empty"),
    (["--console", "/tmp"], "--console '/tmp' is a directory"),
    (["--device", "nope"], "device: 'nope' is not a device vmkit has"),
    (["--device", ""], "device: '' is not a device vmkit has"),
    (["--device", "virtio-rng"] * 32, "device: 32 PCI devices asked for (disks and links included); PCI bus 0 has room for 31"),
    (["--profile-guest", "/nonexistent/profile.txt"], "--profile-guest '/nonexistent/profile.txt' does not exist"),
    (["--profile-guest", "/proc/profile.txt"], "--profile-guest '/proc/profile.txt'"),  # unwritable, even to root
    (["--profile-guest", "/tmp"], "--profile-guest '/tmp' is a directory"),
    (["--profile-guest", ""], "--profile-guest: the path is empty"),
    (["--", "uname", "-a"], "a command (uname -a) runs only in a Linux image: use --image"),
]


@pytest.mark.parametrize("args,message", BAD_OPTIONS)
def test_bad_options(args, message, bad_options):
    assert_refused(bad_options[("run", *args)], message)


@pytest.fixture(scope="module")
def bad_options():
    return run_all([("run", *args) for args, _ in BAD_OPTIONS])


@pytest.mark.parametrize("option", ["--kernel", "--initrd", "--console", "--profile-guest"])
def test_a_path_under_a_file_is_refused(tmp_path, option):
    (tmp_path / "file").write_bytes(b"x")
    path = str(tmp_path / "file" / "x")                  # ENOTDIR, even for root
    assert_refused(run("run", option, path), path, "Not a directory")


def test_initrd_too_large_for_memory(vmkit, tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(40 << 20))
    done = vmkit("run", "--memory", "32", "--initrd", str(initrd))
    assert_refused(done, "is 40.0 MiB, more than the 32.0 MiB it may be here")
    initrd.write_bytes(bytes(31 << 20))              # smaller than RAM, but not above the kernel
    done = vmkit("run", "--memory", "32", "--initrd", str(initrd))
    assert_refused(done, "initrd is 31.0 MiB but only")


def test_an_empty_initrd_is_refused(tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"")
    assert_refused(run("run", "--initrd", str(initrd)), f"initrd '{initrd}' is empty")


@pytest.mark.parametrize("option", ["--kernel", "--initrd", "--console"])
def test_a_fifo_nobody_writes_or_reads_does_not_hang(tmp_path, option):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = run("run", option, str(fifo), timeout=15)
    assert_refused(done, f"'{fifo}'", "FIFO")


@pytest.mark.parametrize("cmdline", [b"\xff\xfe", b"console=ttyS0 root=\xc3(", b"\x80" * 100])
def test_a_command_line_that_is_not_utf8_is_refused(cmdline):
    assert_refused(run("run", "--cmdline", cmdline), "cmdline:", "not valid text (UTF-8)")


def test_a_path_that_is_not_utf8_is_named(tmp_path):
    missing = os.fsencode(tmp_path) + b"/\xff\xfe"
    assert_refused(run("run", "--kernel", missing), "kernel '", "does not exist")
    garbage = os.fsencode(tmp_path) + b"/k\xff"
    Path(os.fsdecode(garbage)).write_bytes(b"garbage!")
    assert_refused(run("run", "--kernel", garbage), "not a bzImage, an ELF vmlinux or a PVH ELF kernel")


def test_41_vcpus_run():
    done = run("run", "--cpus", "41")
    assert_guest_ended(done)
    assert done.results()["cpus_online"] == "41"


def test_a_full_console_costs_the_output_not_the_vm():
    done = run("run", "--console", "/dev/full")
    assert_guest_ended(done)
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("vmkit: warning: guest console output stopped"), done.stderr
    assert "No space left on device" in warnings[0]


ARGUMENT_ERRORS = [
    (["--cpus", "0"], "must be a positive number"),
    (["--memory", "lots"], "is not a number"),
    (["--boot-protocol", "uefi"], "invalid choice"),
    (["--cpus", "-1"], "argument --cpus/-n: '-1' must be a positive number"),
    (["--cpus", "x"], "argument --cpus/-n: 'x' is not a number"),
    (["--cpus", "0x"], "argument --cpus/-n: '0x' is not a number"),
    (["--cpus", ""], "argument --cpus/-n: '' is not a number"),
    (["--memory", "0"], "argument --memory/-m: '0' must be a positive number"),
    (["--memory", "-5"], "argument --memory/-m: '-5' must be a positive number"),
    (["--memory", "1e3"], "argument --memory/-m: '1e3' is not a number"),
    (["--boot-protocol", ""], "argument --boot-protocol: invalid choice: ''"),
    (["--kernel"], "argument --kernel/-k: expected one argument"),
    (["--cpus"], "argument --cpus/-n: expected one argument"),
    (["--memory"], "argument --memory/-m: expected one argument"),
    (["--console"], "argument --console: expected one argument"),
    (["--initrd"], "argument --initrd/-i: expected one argument"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["-z"], "unrecognized arguments: -z"),
    (["--kernel", "/etc/hostname", "--guest", "hello"], "argument --guest/-g: not allowed with argument --kernel"),
    (["--quiet=yes"], "argument --quiet/-q: ignored explicit argument 'yes'"),
    (["--no-pvm-workarounds=0"], "argument --no-pvm-workarounds: ignored explicit argument '0'"),
]


@pytest.mark.parametrize("args,message", ARGUMENT_ERRORS)
def test_argument_errors(args, message, argument_errors):
    assert_refused(argument_errors[("run", *args)], message)


@pytest.fixture(scope="module")
def argument_errors():
    return run_all([("run", *args) for args, _ in ARGUMENT_ERRORS])


COMMAND_ERRORS = [
    ([], "the following arguments are required: COMMAND"),
    (["nope"], "argument COMMAND: invalid choice: 'nope'"),
    (["--nope", "run"], "unrecognized arguments: --nope"),
    (["image"], "the following arguments are required: ACTION"),
    (["image", "nope"], "argument ACTION: invalid choice: 'nope'"),
    (["image", "rm"], "the following arguments are required: name"),
    (["build-guest"], "the following arguments are required: name"),
    (["build-guest", "nope"], "no guest program 'nope'"),
    (["build-guest", "hello", "--variant", "uefi"], "argument --variant: invalid choice: 'uefi'"),
    (["image", "build", "nope"], "unknown image 'nope'"),
]


@pytest.mark.parametrize("args,message", COMMAND_ERRORS)
def test_command_errors(args, message, command_errors):
    assert_refused(command_errors[tuple(args)], message)


@pytest.fixture(scope="module")
def command_errors():
    return run_all([tuple(args) for args, _ in COMMAND_ERRORS])


# --- the image store ----------------------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path):
    """A cache folder with one complete-looking image, `linux`, and a file that must survive."""
    image = tmp_path / "images" / "linux"
    image.mkdir(parents=True)
    (image / "manifest.json").write_text('{"kind": "linux"}')
    (image / "vmlinux").write_bytes(b"not a kernel")
    (image / "initramfs.cpio").write_bytes(b"070701")
    (tmp_path / "precious").write_text("keep me")
    return tmp_path


@pytest.mark.parametrize("name", ["nope", ".", "..", "../images/linux", "", "a" * 300])
def test_image_rm_of_what_is_not_an_image(cache, name):
    done = run("image", "rm", name, env={"VMKIT_CACHE_DIR": str(cache)})
    assert_refused(done, repr(name)[:40])
    assert (cache / "precious").exists() and (cache / "images" / "linux" / "vmlinux").exists()


@pytest.mark.parametrize("name", ["nope", "." * 3, "a" * 300, "linux/..", "linux "])
def test_run_image_that_is_not_one(cache, name):
    done = run("run", "--image", name, env={"VMKIT_CACHE_DIR": str(cache)})
    assert_refused(done, "--image", repr(name)[:40])


@pytest.mark.parametrize("manifest", ["garbage", "[1, 2]", "\udcff", ""])
def test_a_damaged_image_is_named_and_still_listed(cache, manifest):
    (cache / "images" / "linux" / "manifest.json").write_bytes(manifest.encode(errors="surrogateescape"))
    env = {"VMKIT_CACHE_DIR": str(cache)}
    assert_refused(run("run", "--image", "linux", "--", "true", env=env), "--image", "'linux'", "damaged")
    listed = run("image", "list", env=env)
    assert_sane(listed)
    assert listed.returncode == 0 and listed.stdout.startswith("linux\t") and "damaged" in listed.stdout


def test_a_manifest_with_odd_fields_is_no_internal_error(cache):
    (cache / "images" / "linux" / "manifest.json").write_text('{"kernel_patches": 7}')
    done = run("run", "--image", "linux", env={"VMKIT_CACHE_DIR": str(cache)})
    assert_refused(done, "image linux")          # its vmlinux is no kernel


# --- malformed kernels of every format ---------------------------------------------------------------

PT_LOAD, PT_NOTE, PT_PHDR = 1, 4, 6
MIB = 1 << 20


def _elf64(*, phoff=64, phnum=1, phentsize=56, machine=62, data=1, klass=2, entry=MIB) -> bytes:
    return struct.pack("<4sBBBB8sHHIQQQIHHHHHH", b"\x7fELF", klass, data, 1, 0, bytes(8), 2, machine, 1,
                       entry, phoff, 0, 0, 64, phentsize, phnum, 0, 0, 0)


def _ph64(*, type=PT_LOAD, offset=0, paddr=MIB, filesz=120, memsz=4096) -> bytes:
    return struct.pack("<IIQQQQQQ", type, 5, offset, paddr, paddr, filesz, memsz, 4096)


def _elf32(*, phoff=52, phnum=1, machine=3) -> bytes:
    return struct.pack("<4sBBBB8sHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, bytes(8), 2, machine, 1,
                       MIB, phoff, 0, 0, 52, 32, phnum, 0, 0, 0)


def _ph32(*, type=PT_LOAD, offset=0, paddr=MIB, filesz=84, memsz=4096) -> bytes:
    return struct.pack("<IIIIIIII", type, offset, paddr, paddr, filesz, memsz, 5, 4096)


def _note(name: bytes, note_type: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name) + 1, len(desc), note_type) + pad(name + b"\0") + pad(desc)


def _elf_with_notes(notes: bytes, note_filesz: int | None = None) -> bytes:
    """ELF64 with a PT_LOAD at 1 MiB (its entry) and a PT_NOTE holding `notes`."""
    start = 64 + 2 * 56
    return (_elf64(phnum=2) + _ph64(filesz=start + len(notes))
            + _ph64(type=PT_NOTE, offset=start, filesz=len(notes) if note_filesz is None else note_filesz,
                    memsz=0) + notes)


def _pvh_note(desc: bytes) -> bytes:
    return _note(b"Xen", 18, desc)                     # XEN_ELFNOTE_PHYS32_ENTRY


def _bzimage(*, version=0x020F, xloadflags=1, loadflags=1, setup_sects=1, payload=4096, init_size=0,
             size: int | None = None) -> bytes:
    data = bytearray(max((setup_sects + 1) * 512 + payload, 0x268))
    data[0x1F1] = setup_sects
    struct.pack_into("<H", data, 0x1FE, 0xAA55)
    data[0x201] = 0x66                                 # the jump over the header: its length
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, version)
    data[0x211] = loadflags
    struct.pack_into("<H", data, 0x236, xloadflags)
    struct.pack_into("<I", data, 0x260, init_size)
    return bytes(data[:(setup_sects + 1) * 512 + payload if size is None else size])


def _random(size: int, prefix: bytes = b"") -> bytes:
    return prefix + random.Random(f"vmkit-{size}-{prefix!r}").randbytes(size)


KERNELS = {
    "empty": (b"", "is empty"),
    "one byte": (b"\x7f", "not a bzImage, an ELF vmlinux or a PVH ELF kernel"),
    "ELF magic only": (b"\x7fELF", "truncated ELF header"),
    "ELF64 header truncated": (_elf64()[:60], "truncated ELF64 header"),
    "ELF32 header truncated": (_elf32()[:40], "truncated ELF header"),
    "phnum 0": (_elf64(phnum=0) + bytes(56), "program headers are missing or truncated"),
    "program headers past the end": (_elf64(phoff=4096), "program headers are missing or truncated"),
    "program header offset 2**63": (_elf64(phoff=2**63) + bytes(56), "program headers are missing or truncated"),
    "program header entry too small": (_elf64(phentsize=8) + _ph64(), "program headers are missing or truncated"),
    "ELF32 program headers truncated": (_elf32(phnum=3) + _ph32(), "program headers are missing or truncated"),
    "segment past the end": (_elf64() + _ph64(filesz=MIB), "segment 0 extends past the end of the file"),
    "segment offset wraps": (_elf64() + _ph64(offset=2**64 - 8, filesz=16), "segment 0 extends past the end"),
    "filesz > memsz": (_elf64() + _ph64(filesz=120, memsz=16), "segment 0 has filesz > memsz"),
    "filesz with memsz 0": (_elf64() + _ph64(filesz=120, memsz=0), "segment 0 has filesz > memsz"),
    "segment outside RAM": (_elf64() + _ph64(paddr=1 << 40), "segment 0 at [0x10000000000, 0x10000001000) is outside guest RAM"),
    "segment wraps around": (_elf64() + _ph64(paddr=2**64 - 4096, filesz=0, memsz=8192), "is outside guest RAM"),
    "segment memsz 2**64-1": (_elf64() + _ph64(memsz=2**64 - 1), "is outside guest RAM"),
    "segment below 1 MiB": (_elf64(entry=0) + _ph64(paddr=0), "segment 0 at [0x0, 0x1000) lies below 1 MiB"),
    "no PT_LOAD": (_elf64() + _ph64(type=PT_PHDR), "no loadable segments"),
    "big-endian": (_elf64(data=2) + _ph64(), "big-endian ELF"),
    "no data encoding": (_elf64(data=0) + _ph64(), "unknown ELF data encoding 0"),
    "ELF class 3": (_elf64(klass=3) + _ph64(), "unknown ELF class 3"),
    "aarch64": (_elf64(machine=183) + _ph64(), "ELF machine 183 is not x86-64"),
    "ELF32 SPARC": (_elf32(machine=2) + _ph32(), "ELF machine 2 is not x86-64"),
    "entry outside the segments": (_elf64(entry=2 * MIB) + _ph64(), "entry point 0x200000 (e_entry) is not in a loaded segment"),
    "note runs past its segment": (_elf_with_notes(_pvh_note(struct.pack("<I", MIB)), note_filesz=16),
                                   "note at file offset 0xb0 runs past its segment"),
    "note header cut": (_elf_with_notes(_pvh_note(struct.pack("<I", MIB)), note_filesz=8), "runs past its segment"),
    "note namesz 2**32-1": (_elf_with_notes(struct.pack("<III", 2**32 - 1, 4, 18) + bytes(8)), "runs past its segment"),
    "note past the end": (_elf64(phnum=2) + _ph64(filesz=176) + _ph64(type=PT_NOTE, offset=176, filesz=MIB),
                          "segment 1 extends past the end of the file"),
    "PVH note of 2 bytes": (_elf_with_notes(_pvh_note(b"\0\0")), "PVH entry (XEN_ELFNOTE_PHYS32_ENTRY) is 2 bytes"),
    "PVH note of 16 bytes": (_elf_with_notes(_pvh_note(bytes(16))), "is 16 bytes, not 4 or 8"),
    "PVH entry outside": (_elf_with_notes(_pvh_note(struct.pack("<I", 0))), "PVH entry point 0x0 is not in a loaded segment"),
    "bzImage protocol 2.11": (_bzimage(version=0x020B), "boot protocol 2.11 is too old"),
    "bzImage protocol 2.00": (_bzimage(version=0x0200), "boot protocol 2.00 is too old"),
    "bzImage not 64-bit": (_bzimage(xloadflags=0), "not a 64-bit kernel (XLF_KERNEL_64 not set)"),
    "bzImage not loaded high": (_bzimage(loadflags=0), "LOADED_HIGH not set"),
    "bzImage without payload": (_bzimage(payload=0), "no protected-mode kernel after the setup code"),
    "bzImage setup_sects 255": (_bzimage(setup_sects=255, size=4096), "no protected-mode kernel after the setup code"),
    "bzImage init_size over RAM": (_bzimage(init_size=2**32 - 1), "needs 4095 MiB above 1 MiB (init_size)"),
    "bzImage header truncated": (_bzimage(size=0x210), "bzImage is truncated"),
    "bzImage header cut mid-way": (_bzimage(size=0x240), "bzImage is truncated"),
    **{f"random {size} bytes": (_random(size), "not a bzImage, an ELF vmlinux or a PVH ELF kernel")
       for size in (1, 7, 64, 512, 4096, 1 << 20)},
    **{f"ELF magic and {size} random bytes": (_random(size, b"\x7fELF"), "") for size in (60, 600, 6000)},
}


@pytest.fixture(scope="module")
def malformed_kernels(tmp_path_factory):
    """name -> (path, how `vmkit run --kernel PATH` ended), for every kernel in KERNELS."""
    folder = tmp_path_factory.mktemp("kernels")
    paths = {}
    for number, (name, (data, _)) in enumerate(KERNELS.items()):
        paths[name] = folder / f"kernel-{number}"
        paths[name].write_bytes(data)
    done = run_all([("run", "--kernel", str(path)) for path in paths.values()])
    return {name: (path, done[("run", "--kernel", str(path))]) for name, path in paths.items()}


@pytest.mark.parametrize("name", KERNELS)
def test_malformed_kernels(name, malformed_kernels):
    path, done = malformed_kernels[name]
    assert_refused(done, str(path), KERNELS[name][1])


def test_kernel_too_big_for_memory(vmkit, tmp_path):
    kernel = tmp_path / "high.elf"
    kernel.write_bytes(_elf64(entry=64 * MIB) + _ph64(paddr=64 * MIB))
    done = vmkit("run", "--memory", "32", "--kernel", str(kernel))
    assert_refused(done, str(kernel), "ELF segment 0 at [0x4000000, 0x4001000) is outside guest RAM (32 MiB)")


@pytest.mark.parametrize("kernel,protocol,message", [
    (_bzimage(), "pvh", "a bzImage boots only through the 64-bit Linux protocol, not pvh"),
    (_elf64() + _ph64(), "pvh", "this ELF has no PVH entry note"),
])
def test_a_boot_protocol_the_kernel_does_not_have(tmp_path, kernel, protocol, message):
    path = tmp_path / "kernel"
    path.write_bytes(kernel)
    assert_refused(run("run", "--kernel", str(path), "--boot-protocol", protocol), str(path), message)


def test_a_command_line_longer_than_the_bzimage_takes(tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(_bzimage())                     # cmdline_size 0: 255 bytes, as before 2.06
    assert_refused(run("run", "--kernel", str(kernel), "--cmdline", "x" * 300), str(kernel), "this kernel accepts 255")


@pytest.mark.parametrize("seed", range(4))
def test_mutated_headers_fail_only_as_boot_errors(seed):
    """Random mutations of the headers of real kernels of each format, loaded in-process: whatever
    the bytes say, the loader either loads them or raises BootError (never IndexError, struct.error,
    OverflowError...), which the CLI turns into its one line."""
    from vmkit.arch.x86.boot import detect_kind, load_guest
    from vmkit.arch.x86.errors import BootError
    from vmkit.guest import build_guest
    from vmkit.memory import GuestMemory

    seeds = [build_guest("hello").read_bytes(), build_guest("hello", "vmlinux").read_bytes(), _bzimage(),
             _elf32() + _ph32(), _elf_with_notes(_pvh_note(struct.pack("<I", MIB)))]
    rng = random.Random(seed)
    memory = GuestMemory.create(64 * MIB)
    try:
        for _ in range(1000):
            data = bytearray(rng.choice(seeds))
            header = 0x300 if data[:4] != b"\x7fELF" else min(len(data), 64 + 56 * 8)
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(header)
                data[at] = rng.choice([0, 0xFF, rng.randrange(256), data[at] ^ (1 << rng.randrange(8))])
            if rng.random() < 0.3:                    # cut, most often inside the headers
                del data[rng.randrange((header if rng.random() < 0.7 else len(data)) + 1):]
            try:
                detect_kind(bytes(data))
                load_guest(memory, bytes(data), cmdline="console=ttyS0", initrd=rng.choice([None, b"x" * 4096]),
                           protocol=rng.choice([None, "pvh", "linux64"]))
            except BootError:
                pass
    finally:
        memory.close()


# --- stdio closed or full ---------------------------------------------------------------------------

@pytest.mark.parametrize("redirections", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-", "2>/dev/full"])
def test_closed_or_full_stdio_does_not_fail_the_vm(redirections):
    done = shell(redirections, "run")
    assert_guest_ended(done)


def test_stdout_to_a_full_device_costs_the_output_not_the_vm():
    done = shell(">/dev/full", "run")
    assert_guest_ended(done)
    assert [line for line in done.stderr.splitlines() if "warning" in line] == [
        "vmkit: warning: guest console output stopped: No space left on device; the rest of it is dropped"]


@pytest.mark.parametrize("redirections", ["2>&-", "2>/dev/full"])
def test_a_start_error_with_stderr_closed_or_full_is_still_125(redirections):
    done = shell(redirections, "run", "--cpus", "0")
    assert done.returncode == START_ERROR


@pytest.mark.parametrize("redirections,args", [
    (">/dev/full", ["guests"]),
    (">&-", ["guests"]),
    (">/dev/full", ["build-guest", "hello"]),
])
def test_a_result_that_cannot_be_written_is_a_start_error(redirections, args):
    assert_refused(shell(redirections, *args), "standard output")


# --- stop signals ------------------------------------------------------------------------------------

def _handlers_installed(pid: int) -> bool:
    """Whether vmkit has its stop-signal handlers in place: SIGTERM is caught (Python leaves it
    alone; vmkit installs it with the others). Before that, the interpreter itself is starting, and a
    signal gets its default action: no program can catch a signal before it runs."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _start_waiting_guest(spawn, **kwargs) -> subprocess.Popen:
    """`vmkit run --guest serial_echo`, which waits for a line of input, once vmkit handles signals."""
    proc = spawn("run", "--guest", "serial_echo", stdin=subprocess.PIPE, **kwargs)
    deadline = time.monotonic() + TIMEOUT
    while not _handlers_installed(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.001)
    return proc


def _finish(proc: subprocess.Popen) -> Finished:
    out, err = proc.communicate(timeout=TIMEOUT)
    done = Finished(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    assert_sane(done)
    return done


@pytest.mark.parametrize("seed", range(12))
def test_a_stop_signal_at_a_random_moment(spawn, seed):
    """Before the VM runs (loading, building) or while it runs: 128 + n, and a line that says so."""
    rng = random.Random(seed)
    signum = rng.choice(STOP_SIGNALS)
    proc = _start_waiting_guest(spawn)
    time.sleep(rng.uniform(0, 0.3))
    proc.send_signal(signum)
    done = _finish(proc)
    assert done.returncode == 128 + signum, done.stderr
    assert f"stopped by {signum.name}" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("seed", range(4))
def test_a_burst_of_stop_signals(spawn, seed):
    """Many signals in a row, of all three kinds: the first decides, the rest change nothing (and a
    handler that runs inside another never waits for a lock the first one holds)."""
    rng = random.Random(seed)
    proc = _start_waiting_guest(spawn)
    time.sleep(rng.uniform(0, 0.3))
    for _ in range(30):
        try:
            proc.send_signal(rng.choice(STOP_SIGNALS))
        except ProcessLookupError:
            break
        time.sleep(rng.choice([0, 0, 0.001]))
    done = _finish(proc)
    assert done.returncode in {128 + signum for signum in STOP_SIGNALS}, done.stderr


def test_a_sighup_the_parent_ignores_stays_ignored(spawn):
    """As under nohup: SIGHUP does not stop the VM; SIGTERM still does."""
    proc = _start_waiting_guest(spawn, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert proc.stdout.readline() == b"READY\n"
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc).returncode == 143


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_after_the_guest_ended_does_not_change_the_status(spawn, signum):
    proc = _start_waiting_guest(spawn)
    assert proc.stdout.readline() == b"READY\n"
    proc.stdin.write(b"bye\n")
    proc.stdin.flush()
    for line in proc.stderr:
        if b"(exit status" in line:               # said after the status is decided
            break
    try:
        for _ in range(20):
            proc.send_signal(signum)
            time.sleep(0.005)
    except ProcessLookupError:
        pass
    assert _finish(proc).returncode == GUEST_SUCCESS


def test_a_stop_signal_dropped_in_a_callback_still_stops_start_up(capfd):
    """Python drops an exception raised where it cannot propagate (here a weakref callback, as in the
    import system's module locks) and prints it with its traceback. A stop signal whose Stopped is
    dropped is not printed, and start-up stops at the latest where the VM would start."""
    import weakref

    from vmkit.cli import Stopped, StopSignals

    class Thing:
        pass

    def callback(_):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):             # the handler runs here, on the loop's way back at the latest
            pass

    stops = StopSignals()
    stops.install()
    try:
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing                         # the callback runs, and the Stopped raised in it is dropped
        assert ref() is None and stops.signum == signal.SIGTERM
        with pytest.raises(Stopped) as stopped:
            stops.running()
        assert stopped.value.signum == signal.SIGTERM
    finally:
        stops.decided()
        stops.restore()
    assert "Traceback" not in capfd.readouterr().err
