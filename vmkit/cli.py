"""The `vmkit` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

EXIT_VMM_ERROR = 125  # vmkit could not start the VM (bad option, missing file, no KVM)

DESCRIPTION = "vmkit: a virtual machine monitor on Linux KVM."
EPILOG = """\
exit status of `vmkit run`:
  (v << 1) | 1  the guest wrote v to the debug-exit port 0xf4 (QEMU isa-debug-exit)
  0             the guest powered off, or Ctrl-A x was pressed on the console
  2             the guest reset (reboot)
  4             a vCPU triple-faulted
  6             the VM failed (e.g. an instruction KVM cannot emulate)
  125           vmkit could not start the VM
  130 / 143     stopped by SIGINT / SIGTERM
"""


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmkit", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="boot a VM and attach its serial console",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = run.add_mutually_exclusive_group()
    source.add_argument("--kernel", "-k", metavar="PATH",
                        help="guest kernel: bzImage, ELF vmlinux or PVH ELF")
    source.add_argument("--guest", "-g", metavar="NAME",
                        help="a built-in guest program (default: hello); see `vmkit guests`")
    source.add_argument("--image", metavar="NAME",
                        help="a Linux image from `vmkit image build`; the command after -- runs in it")
    run.add_argument("--initrd", "-i", metavar="PATH", help="initial ramdisk")
    run.add_argument("--cmdline", "-c", default="", metavar="ARGS", help="kernel command line")
    run.add_argument("--cpus", "-n", type=_positive, default=1, metavar="N", help="vCPUs (default 1)")
    run.add_argument("--memory", "-m", type=_positive, default=64, metavar="MIB",
                     help="guest RAM in MiB (default 64)")
    run.add_argument("--console", default="stdio", metavar="TARGET",
                     help="where guest serial output goes: stdio (default), none or a file path")
    run.add_argument("--boot-protocol", choices=("pvh", "linux64"),
                     help="force a boot protocol (default: PVH when the ELF has the note, else linux64)")
    run.add_argument("--device", "-d", action="append", default=[], metavar="TYPE",
                     help="add a PCI device (repeatable): virtio-rng")
    run.add_argument("--no-pvm-workarounds", action="store_true",
                     help="on PVM hosts, do not add the Linux command-line switches vmkit adds")
    run.add_argument("--quiet", "-q", action="store_true", help="print nothing but the guest's output")
    run.add_argument("--profile-guest", metavar="FILE",
                     help="sample the vCPUs' RIP every 5 ms and write a per-symbol table to FILE at the end")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                     help="with --image: the command to run in the guest")

    image = commands.add_parser("image", help="build, list and remove Linux guest images")
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    image_build = image_commands.add_parser("build", help="build an image (kernel and initramfs)")
    image_build.add_argument("name", nargs="?", default="linux")
    image_build.add_argument("--jobs", "-j", type=_positive, help="parallel compile jobs (default: CPUs)")
    image_build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    image_commands.add_parser("list", help="list built images")
    image_rm = image_commands.add_parser("rm", help="remove an image")
    image_rm.add_argument("name")

    commands.add_parser("guests", help="list the built-in guest programs")
    build = commands.add_parser("build-guest", help="build a built-in guest and print its image path")
    build.add_argument("name")
    build.add_argument("--variant", choices=("pvh", "vmlinux"), default="pvh")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "guests":
            from vmkit.guest import program_names
            print("\n".join(program_names()))
            return 0
        if args.command == "image":
            return image_command(args)
        if args.command == "build-guest":
            from vmkit.guest import build_guest
            print(build_guest(args.name, args.variant))
            return 0
        return run_vm(args)
    except VmkitStartError as exc:
        print(f"vmkit: error: {exc}", file=sys.stderr)
        return EXIT_VMM_ERROR


class VmkitStartError(Exception):
    """Anything that keeps the VM from starting, with a message for the user."""


def image_command(args: argparse.Namespace) -> int:
    from vmkit.images import store
    from vmkit.images.builder import build_image
    from vmkit.images.initramfs import InitramfsError
    from vmkit.images.kernel import KernelBuildError

    try:
        if args.image_command == "build":
            build_image(args.name, jobs=args.jobs, force=args.force,
                        progress=lambda line: print(f"vmkit image: {line}", flush=True))
        elif args.image_command == "list":
            for image in store.list_images():
                m = image.manifest
                print(f"{image.name}\tLinux {m.get('kernel_release', '?')}\t"
                      f"{image.size_bytes() / 2**20:.1f} MiB\tbuilt {m.get('built_at', '?')}\t{image.path}")
        elif args.image_command == "rm":
            store.remove(args.name)
            print(f"removed image {args.name}")
    except (store.ImageError, KernelBuildError, InitramfsError) as exc:
        raise VmkitStartError(str(exc)) from None
    return 0


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise VmkitStartError(f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise VmkitStartError(f"{what} {path!r} is a directory, not a file") from None
    except PermissionError:
        raise VmkitStartError(f"{what} {path!r} is not readable (permission denied)") from None


def _built_in_guest(name: str) -> tuple[bytes, str]:
    """The image of a built-in guest program (imported late: the builder is not needed for --kernel)."""
    from vmkit.guest import GuestBuildError, build_guest

    try:
        return build_guest(name).read_bytes(), f"built-in guest {name}"
    except GuestBuildError as exc:
        raise VmkitStartError(str(exc)) from None


def run_vm(args: argparse.Namespace) -> int:
    from vmkit.arch.x86.errors import BootError
    from vmkit.kvm.errors import KvmError
    from vmkit.vmm import host, outcome
    from vmkit.vmm.builder import build_machine, is_linux
    from vmkit.vmm.config import ConfigError, VmConfig
    from vmkit.vmm.console import ConsoleInput, ConsoleOutput

    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    try:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if command and not args.image:
            raise VmkitStartError(f"a command ({' '.join(command)}) runs only in a Linux image: use --image")
        cmdline, initrd, syscall_fixed = args.cmdline, None, False
        if args.image:
            kernel, kernel_name, initrd, cmdline, syscall_fixed = _linux_image(args.image, cmdline, command)
        elif args.kernel:
            kernel, kernel_name = _read_file(args.kernel, "kernel"), args.kernel
        else:
            kernel, kernel_name = _built_in_guest(args.guest or "hello")
        if args.initrd:
            initrd = _read_file(args.initrd, "initrd")   # --initrd replaces an image's initramfs
        try:
            output = ConsoleOutput.for_target(args.console)
        except OSError as exc:
            raise VmkitStartError(f"--console: cannot open {args.console!r}: {exc.strerror}") from None
        if host.host_kind() == "pvm":
            say(host.PVM_NOTICE)
            if not args.no_pvm_workarounds and is_linux(kernel):
                say("vmkit: Linux runs in KVM's instruction emulator here: expect minutes, not milliseconds")
                if not syscall_fixed and syscall_reaches_ring0() is False:
                    say("vmkit: warning: on this host `syscall` from guest ring 3 does not enter ring 0 "
                        "(PVM's paravirtual convention), so a stock Linux kernel boots but its userspace "
                        "is killed at the first system call; the kernels of `vmkit image build` carry a "
                        "patch for it")
        if args.image:
            marker = ExitMarker(output.write)
            sink = marker.write
        else:
            marker, sink = None, output.write
        config = VmConfig(kernel=kernel, kernel_name=kernel_name, cmdline=cmdline, initrd=initrd,
                          vcpus=args.cpus, memory_mib=args.memory, protocol=args.boot_protocol,
                          pvm_workarounds=not args.no_pvm_workarounds, console_output=sink,
                          devices=tuple(args.device))
        machine = build_machine(config)
    except BootError as exc:              # only build_machine raises these: kernel_name is set
        raise VmkitStartError(f"{kernel_name}: {exc}") from None
    except (KvmError, ConfigError) as exc:
        raise VmkitStartError(str(exc)) from None

    console_input = ConsoleInput(machine.devices["serial0"].receive,  # type: ignore[attr-defined]
                                 lambda: machine.stop(outcome.QUIT))
    stop_signals = {signal.SIGINT: ("SIGINT", outcome.STATUS_SIGINT),
                    signal.SIGTERM: ("SIGTERM", outcome.STATUS_SIGTERM)}
    previous = {}
    for signum, (name, status) in stop_signals.items():
        previous[signum] = signal.signal(
            signum, lambda s, f, n=name, st=status: machine.stop(outcome.signalled(n, st)))
    profiler = None
    try:
        machine.start()
        if args.profile_guest:
            from vmkit.vmm.guest_profiler import GuestProfiler
            profiler = GuestProfiler()
            machine.attach_profiler(profiler)
        if _stdin_usable():
            console_input.start()
        result = None
        while result is None:
            result = machine.wait(0.5)
    finally:
        if profiler is not None:
            from vmkit.vmm.guest_profiler import write_report
            profiler.stop()
            write_report(profiler, kernel, args.profile_guest)
        console_input.stop()
        machine.close()
        output.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if marker is not None and marker.status is not None and result.kind in ("poweroff", "reset"):
        say(f"vmkit: the command exited with status {marker.status}; {result.message}")
        return marker.status
    say(f"vmkit: {result.message} (exit status {result.status})")
    return result.status


class ExitMarker:
    """Passes console output on, and picks out the init's "VMKIT_EXIT_STATUS=N" line."""

    MARKER = b"VMKIT_EXIT_STATUS="

    def __init__(self, forward) -> None:
        self._forward = forward
        self._line = bytearray()
        self.status: int | None = None

    def write(self, data: bytes) -> None:
        self._forward(data)
        for byte in data:
            if byte == 0x0A:
                line = bytes(self._line).strip()
                if line.startswith(self.MARKER) and line[len(self.MARKER):].isdigit():
                    self.status = int(line[len(self.MARKER):]) & 0xFF
                self._line.clear()
            elif len(self._line) < 256:
                self._line.append(byte)


def _linux_image(name: str, cmdline: str, command: list[str]) -> tuple[bytes, str, bytes, str, bool]:
    """Kernel, name, initramfs and command line for `--image NAME [-- COMMAND]`, and whether its
    kernel makes system calls that `syscall` left in ring 3 (docs/linux-guests.md)."""
    from vmkit.images import kernel, store

    try:
        image = store.load(name)
    except store.ImageError as exc:
        raise VmkitStartError(str(exc)) from None
    full = " ".join(part for part in ("console=ttyS0", cmdline) if part)
    if command:
        full += " -- " + " ".join(command)   # Linux hands what follows "--" to init as arguments
    syscall_fixed = kernel.SYSCALL_PATCH in image.manifest.get("kernel_patches", ())
    return image.kernel.read_bytes(), f"image {name}", image.initrd.read_bytes(), full, syscall_fixed


def syscall_reaches_ring0() -> bool | None:
    """Boot the guest kit's syscall_probe once: does `syscall` from ring 3 enter ring 0 here?
    None when the probe cannot run (no compiler for the guest kit, or the VM failed)."""
    from vmkit.guest import GuestBuildError, build_guest
    from vmkit.vmm.builder import build_machine
    from vmkit.vmm.config import VmConfig

    output = bytearray()
    try:
        with build_machine(VmConfig(kernel=build_guest("syscall_probe").read_bytes(), memory_mib=8,
                                    console_output=output.extend)) as probe:
            probe.start()
            probe.wait(10)
    except (GuestBuildError, OSError):
        return None
    text = output.decode(errors="replace")
    if "RESULT syscall_enters_ring0=" not in text:
        return None
    return "RESULT syscall_enters_ring0=1" in text


def _stdin_usable() -> bool:
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
