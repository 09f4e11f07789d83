"""The `vmkit` command.

Every way it ends is a status from the contract in vmm/outcome.py: the guest's own outcome, 125 when
the VM could not be started (bad options and arguments included, each with one line naming the
input), 128 + n when signal n stopped it, and 70, with a crash report, when vmkit itself failed.
No traceback reaches the user unless --debug asks for it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from vmkit.vmm import outcome

if TYPE_CHECKING:
    from vmkit.vmm.config import VmConfig
    from vmkit.vmm.console import ConsoleOutput
    from vmkit.vmm.machine import Machine

DESCRIPTION = "vmkit: a virtual machine monitor on Linux KVM."
EPILOG = "exit status of `vmkit run`:\n" + outcome.exit_status_help() + """
other commands exit with 0 on success, 125 on an error of input or host, 70 on a bug in vmkit.
"""
STOP_SIGNALS: dict[int, str] = {signal.SIGHUP: "SIGHUP", signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
SIGNAL_POLL_SECONDS = 0.05      # how soon the wait loop acts on a stop signal the handler recorded
MAX_BOOT_FILE = 1 << 30          # a kernel or initrd larger than 1 GiB is refused before it is read


class StartError(Exception):
    """Anything that keeps the VM from starting, with a one-line message for the user."""


class UsageError(StartError):
    """The command line itself is wrong (unknown option, missing or malformed value)."""


class Stopped(BaseException):
    """A stop signal arrived before the VM ran; start-up unwinds through this."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is a one-line StartError instead of exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


class StopSignals:
    """SIGHUP, SIGINT and SIGTERM, from the first line of main to the last.

    The first one decides the status. Before the VM runs, it raises Stopped in the main thread, so
    start-up unwinds and cleans up (a guest build kills its compiler, a half-built VM closes its
    fds); later ones change nothing while it unwinds. Python drops an exception raised where it
    cannot propagate (a weakref callback, a finalizer): such a Stopped is not reported, the next
    signal raises again, and start-up stops at the latest where the VM would start. While the VM
    runs, the signal is only recorded, and the main thread's wait loop stops the VM with a signal
    outcome: the handler takes no lock, since it may run in the middle of code that holds one. Once
    the exit status is decided, they change nothing. A SIGHUP that vmkit's parent set to be ignored
    (nohup) stays ignored; SIGINT and SIGTERM are always explicit requests.
    """

    def __init__(self) -> None:
        self._running = False
        self._decided = False
        self._raised = False                 # a Stopped is unwinding start-up
        self._previous: dict[int, Any] = {}
        self._previous_hook: Callable[[Any], object] | None = None
        self.signum: int | None = None       # the first stop signal that arrived

    def install(self) -> None:
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)   # none arrives half-way through
        try:
            for signum in STOP_SIGNALS:
                if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        if self._previous_hook is not None:
            sys.unraisablehook = self._previous_hook

    def running(self) -> None:
        """From now on a stop signal is only recorded, for the wait loop to act on. One that came
        before and was dropped (see the class) stops start-up here, before the VM runs."""
        if self.signum is not None and not self._decided:
            self._raised = True
            raise Stopped(self.signum)
        self._running = True

    def decided(self) -> None:
        self._decided = True

    def stop_outcome(self) -> outcome.Outcome | None:
        """The signal outcome for the VM, once a stop signal arrived."""
        if self.signum is None:
            return None
        return outcome.signalled(STOP_SIGNALS[self.signum], outcome.SIGNAL_STATUS_BASE + self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._decided:
            return
        if self.signum is None:
            self.signum = signum
        if self._running or self._raised:
            return
        self._raised = True
        raise Stopped(self.signum)

    def _unraisable(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Stopped):
            self._raised = False             # dropped where it was raised: let the next signal raise
            return
        if self._previous_hook is not None:
            self._previous_hook(unraisable)


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """A disk size: bytes, or a number with a K, M, G or T suffix (powers of 1024)."""
    number, suffix = text.rstrip("KMGTkmgt"), text[len(text.rstrip("KMGTkmgt")):].upper()
    if suffix.endswith("B"):
        suffix = suffix[:-1]
    if not number.isdigit() or suffix not in SIZE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 8G or a number of bytes)")
    value = int(number) * SIZE_SUFFIXES[suffix]
    if value <= 0 or value % 512:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive multiple of 512 bytes")
    return value


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser = Parser(prog="vmkit", description=DESCRIPTION, epilog=EPILOG, parents=[common],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    run = commands.add_parser("run", help="boot a VM and attach its serial console", parents=[common],
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
    run.add_argument("--detach", "-d", action="store_true",
                     help="start the VM in the vmkit daemon (started if need be), print its name and return; "
                          "its console goes to `vmkit logs NAME`")
    run.add_argument("--name", metavar="NAME", help="with -d: the VM's name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, "
                                                    "unique; default: generated)")
    run.add_argument("--device", action="append", default=[], metavar="TYPE",
                     help="add a PCI device (repeatable): virtio-rng")
    run.add_argument("--disk", action="append", default=[], metavar="PATH[,OPTION...]",
                     help="a virtio-blk disk (repeatable: /dev/vda, /dev/vdb, ...): a raw or qcow2 image; "
                          "options: ro, format=raw|qcow2 (probed by default), cache=writeback (default)|none|"
                          "unsafe, serial=TEXT (default: from the file's device and inode), iops=N and bps=N "
                          "(rate limits: token buckets of N refilled each second)")
    from vmkit.vmm.links import LINK_OPTIONS
    for link in LINK_OPTIONS:
        run.add_argument(link.option, action="append", default=[], metavar=link.metavar, help=link.help)
    run.add_argument("--no-pvm-workarounds", action="store_true",
                     help="on PVM hosts, do not add the Linux command-line switches (clearcpuid=...) and do "
                          "not hide KVM's hypercall-based paravirtual features from the guest")
    run.add_argument("--quiet", "-q", action="store_true", help="print nothing but the guest's output")
    run.add_argument("--profile-guest", metavar="FILE",
                     help="sample the vCPUs' RIP every 5 ms and write a per-symbol table to FILE at the end")
    run.add_argument("guest_command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                     help="with --image: the command to run in the guest")

    image = commands.add_parser("image", help="build, list and remove Linux guest images", parents=[common])
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="ACTION",
                                          parser_class=Parser)
    image_build = image_commands.add_parser("build", help="build an image (kernel and initramfs)", parents=[common])
    image_build.add_argument("name", nargs="?", default="linux")
    image_build.add_argument("--jobs", "-j", type=_positive, help="parallel compile jobs (default: CPUs)")
    image_build.add_argument("--force", action="store_true", help="rebuild even if nothing changed")
    image_commands.add_parser("list", help="list built images", parents=[common])
    image_rm = image_commands.add_parser("rm", help="remove an image", parents=[common])
    image_rm.add_argument("name")

    disk = commands.add_parser("disk", help="create and inspect disk images (raw, qcow2)", parents=[common])
    disk_commands = disk.add_subparsers(dest="disk_command", required=True, metavar="ACTION",
                                        parser_class=Parser)
    disk_create = disk_commands.add_parser("create", help="create an image (never overwrites a file)",
                                           parents=[common])
    disk_create.add_argument("path")
    disk_create.add_argument("size", nargs="?", type=_size,
                             help="bytes, or with a K, M, G or T suffix (powers of 1024); with --backing: "
                                  "the backing file's size when left out")
    disk_create.add_argument("--format", "-f", choices=("raw", "qcow2"),
                             help="raw, or qcow2 (the default with --backing, else raw)")
    disk_create.add_argument("--backing", "-b", metavar="BASE",
                             help="a backing file (qcow2): reads of unwritten clusters come from it; a relative "
                                  "name is relative to the new image's directory")
    disk_create.add_argument("--backing-format", "-F", choices=("raw", "qcow2"), help="BASE's format (probed)")
    disk_info = disk_commands.add_parser("info", help="show an image's format, sizes and backing chain",
                                         parents=[common])
    disk_info.add_argument("path")

    from vmkit.daemon.parsers import add_parsers
    add_parsers(commands, common)
    commands.add_parser("guests", help="list the built-in guest programs", parents=[common])
    build = commands.add_parser("build-guest", help="build a built-in guest and print its image path",
                                parents=[common])
    build.add_argument("name")
    build.add_argument("--variant", choices=("pvh", "vmlinux"), default="pvh")
    return parser


def say(message: str) -> None:
    """One line on stderr; a closed or full stderr loses it rather than failing."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        print(message, file=stream, flush=True)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None, *, keep_signal_handlers: bool = False) -> int:
    """Run one `vmkit` command and return its exit status (see EPILOG).

    The stop-signal handlers are restored on return unless `keep_signal_handlers` (the program's
    entry point keeps them, so a signal after the status is decided cannot change it)."""
    stops = StopSignals()
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        try:
            stops.install()
            args = build_parser().parse_args(arguments)
            args.debug = debug                 # given before or after the subcommand
            args.arguments = arguments
            return _dispatch(args, stops)
        except StartError as exc:
            stops.decided()
            say(f"vmkit: error: {exc}")
            return outcome.STATUS_START_ERROR
        except KeyboardInterrupt:            # SIGINT before the handler was installed
            stops.decided()
            say("vmkit: stopped by SIGINT before the VM ran")
            return outcome.STATUS_SIGINT
        except Exception as exc:
            stops.decided()
            return report_bug(f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc(), debug)
    except Stopped as exc:                   # before the VM ran, or while an error was being reported
        stops.decided()
        say(f"vmkit: stopped by {STOP_SIGNALS[exc.signum]} before the VM ran")
        return outcome.SIGNAL_STATUS_BASE + exc.signum
    finally:
        stops.decided()
        if not keep_signal_handlers:
            stops.restore()


def entry() -> NoReturn:
    """The `vmkit` program."""
    status = main(keep_signal_handlers=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)        # nothing left to flush can fail now and turn the status into 120


def _dispatch(args: argparse.Namespace, stops: StopSignals) -> int:
    if args.command == "guests":
        from vmkit.guest import program_names
        output("\n".join(program_names()))
        return 0
    if args.command == "image":
        return image_command(args)
    if args.command == "disk":
        return disk_command(args)
    if args.command == "build-guest":
        from vmkit.guest import GuestBuildError, build_guest
        try:
            path = build_guest(args.name, args.variant)
        except GuestBuildError as exc:
            raise StartError(str(exc)) from None
        output(str(path))
        return 0
    from vmkit.daemon.parsers import COMMANDS
    if args.command in COMMANDS:
        from vmkit.daemon.commands import dispatch
        return dispatch(args)
    if args.detach:
        from vmkit.daemon.commands import run_detached
        return run_detached(args, args.arguments[args.arguments.index("run") + 1:])
    if args.name is not None:
        raise StartError("--name names a detached VM: use it with -d")
    return run_vm(args, stops)


def output(text: str) -> None:
    """A command's result on stdout; StartError when it cannot be written (closed, or a full disk)."""
    stream = sys.stdout
    if stream is None:
        raise StartError("cannot write the result: standard output is closed")
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is closed"
        raise StartError(f"cannot write the result to standard output: {reason}") from None


def progress(line: str) -> None:
    """A progress line on stdout; one that cannot be written is lost, and the work goes on."""
    try:
        if sys.stdout is not None:
            print(line, flush=True)
    except (OSError, ValueError):
        pass


def report_bug(message: str, trace: str, debug: bool) -> int:
    """Say that vmkit failed, where the report is and where to send it; the internal-error status."""
    report = _write_crash_report(message, trace)
    say(f"vmkit: {message}")
    where = f"the details are in {report}" if report else "no report file could be written"
    say(f"vmkit: this is a bug in vmkit, not in the guest or in what you asked for; {where}. Please report it "
        "to the vmkit developers with that file and the command you ran (README.md: Reporting a bug)."
        + ("" if debug else " --debug shows the traceback here."))
    if debug:
        say(trace.rstrip())
    return outcome.STATUS_INTERNAL_ERROR


def _write_crash_report(message: str, trace: str) -> Path | None:
    import platform

    from vmkit.cache import cache_root

    try:
        folder = cache_root() / "crash"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"vmkit-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.txt"
        path.write_text(f"{message}\n\ncommand: {sys.argv!r}\npython: {sys.version}\n"
                        f"host: {platform.platform()}\n\n{trace}")
        return path
    except OSError:
        return None


def image_command(args: argparse.Namespace) -> int:
    from vmkit.images import store
    from vmkit.images.builder import build_image
    from vmkit.images.initramfs import InitramfsError
    from vmkit.images.kernel import KernelBuildError

    try:
        if args.image_command == "build":
            from vmkit.build_progress import BuildProgress

            with BuildProgress("vmkit image") as line:
                build_image(args.name, jobs=args.jobs, force=args.force, progress=line)
        elif args.image_command == "list":
            for image in store.list_images():
                m = image.manifest
                size = f"{image.size_bytes() / 2**20:.1f} MiB" if m else "damaged"
                output(f"{image.name}\tLinux {m.get('kernel_release', '?')}\t"
                       f"{size}\tbuilt {m.get('built_at', '?')}\t{image.path}")
        elif args.image_command == "rm":
            store.remove(args.name)
            progress(f"removed image {args.name}")
    except (store.ImageError, KernelBuildError, InitramfsError) as exc:
        raise StartError(str(exc)) from None
    return 0


def disk_command(args: argparse.Namespace) -> int:
    from vmkit.storage import StorageError, create, info

    try:
        if args.disk_command == "create":
            image_format = args.format or ("qcow2" if args.backing else "raw")
            if args.size is None and not args.backing:
                raise StartError("disk create: give a SIZE (or a --backing file whose size it takes)")
            create(args.path, args.size, image_format, args.backing, args.backing_format)
            progress(f"created {image_format} image {args.path}")
            return 0
        described = info(args.path)
    except (StorageError, OSError, ValueError) as exc:
        raise StartError(f"disk {args.disk_command}: {exc}") from None
    lines = []
    for depth, image in enumerate(described.chain()):
        lead = "  " * depth + ("backing: " if depth else "")
        facts = [f"{image.format}", f"virtual size {image.virtual_size} bytes ({image.virtual_size / 2**30:.2f} GiB)",
                 f"on disk {image.actual_size} bytes"]
        if image.cluster_size:
            facts.append(f"cluster size {image.cluster_size}")
        if image.dirty or image.corrupt:
            facts.append("DIRTY" if image.dirty else "CORRUPT")
        lines.append(f"{lead}{image.path}: {', '.join(facts)}")
    output("\n".join(lines))
    return 0


class RunPlan(NamedTuple):
    """What `vmkit run` resolved its options into, before any VM exists."""

    config: VmConfig
    kernel: bytes
    output: ConsoleOutput
    marker: ExitMarker | None


def run_vm(args: argparse.Namespace, stops: StopSignals) -> int:
    from vmkit.vmm.console import ConsoleInput

    quiet = args.quiet
    notices: list[str] = []             # said once the VM is built: a start error is the only line
    plan = resolve_run(args, notices.append)
    machine: Machine | None = None
    console_input = None
    profiler = None
    result = None
    try:
        machine = build_planned_machine(plan)
        for notice in [*notices, *machine.notes] if not quiet else ():
            say(notice)
        stops.running()
        console_input = ConsoleInput(machine.console.receive, lambda: machine.stop(outcome.QUIT))
        machine.start()
        if args.profile_guest:
            from vmkit.vmm.guest_profiler import GuestProfiler
            profiler = GuestProfiler()
            machine.attach_profiler(profiler)
        if _stdin_usable():
            console_input.start()
        while result is None:
            stopped = stops.stop_outcome()
            if stopped is not None:
                machine.stop(stopped)            # here, not in the signal handler: it takes locks
            result = machine.wait(SIGNAL_POLL_SECONDS)
    finally:
        if profiler is not None:
            profiler.stop()
            _write_profile(profiler, plan.kernel, args.profile_guest)
        if console_input is not None:
            console_input.stop()
        if machine is not None:
            machine.close()
        plan.output.close()
    stops.decided()
    if result.kind == "internal":
        return report_bug(result.message, result.detail, args.debug)
    status, message = run_exit_status(plan, result)
    if not quiet:
        say(f"vmkit: {message}")
    return status


def build_planned_machine(plan: RunPlan) -> Machine:
    """Build the machine `resolve_run` planned; what keeps it from being built is a StartError."""
    from vmkit.arch.x86.errors import BootError
    from vmkit.kvm.errors import KvmError
    from vmkit.vmm.builder import build_machine
    from vmkit.vmm.config import ConfigError

    try:
        return build_machine(plan.config)
    except BootError as exc:
        raise StartError(f"{plan.config.kernel_name}: {exc}") from None
    except (KvmError, ConfigError) as exc:
        raise StartError(str(exc)) from None


def run_exit_status(plan: RunPlan, result: outcome.Outcome) -> tuple[int, str]:
    """The exit status of a run that ended with `result`, and the line that says why: an image's
    command's own status when its init reported one, else the outcome's."""
    marker = plan.marker
    if marker is not None and marker.status is not None and result.kind in ("poweroff", "reset"):
        return marker.status, f"the command exited with status {marker.status}; {result.message}"
    return result.status, f"{result.message} (exit status {result.status})"


def _write_profile(profiler: object, kernel: bytes, path: str) -> None:
    from vmkit.vmm.guest_profiler import GuestProfiler, write_report

    assert isinstance(profiler, GuestProfiler)
    try:
        write_report(profiler, kernel, path)
    except OSError as exc:
        say(f"vmkit: --profile-guest: cannot write {path!r}: {exc.strerror}")


def resolve_run(args: argparse.Namespace, notice: Callable[[str], None]) -> RunPlan:
    """Check every option of `vmkit run` and read its files, before any VM is built."""
    from vmkit.arch.x86.boot import detect_kind
    from vmkit.arch.x86.errors import BootError
    from vmkit.vmm import host
    from vmkit.vmm.builder import is_linux
    from vmkit.vmm.config import MAX_VCPUS, ConfigError, DiskSpec, VmConfig, check_cmdline
    from vmkit.vmm.console import ConsoleOutput
    from vmkit.vmm.host_files import check_output_file, read_input_file
    from vmkit.vmm.links import LINK_OPTIONS, parse_links

    try:
        command = args.guest_command[1:] if args.guest_command[:1] == ["--"] else args.guest_command
        if command and args.image is None:
            raise StartError(f"a command ({' '.join(command)}) runs only in a Linux image: use --image")
        if args.profile_guest is not None:
            check_output_file(args.profile_guest, "--profile-guest")
        limit = min(args.memory << 20, MAX_BOOT_FILE)
        cmdline, initrd, syscall_fixed = args.cmdline, None, False
        check_cmdline(cmdline)
        if args.image is not None:
            kernel, kernel_name, initrd, cmdline, syscall_fixed = _linux_image(args.image, cmdline, command, limit)
        elif args.kernel is not None:
            kernel, kernel_name = read_input_file(args.kernel, "kernel", limit), args.kernel
        else:
            kernel, kernel_name = _built_in_guest("hello" if args.guest is None else args.guest)
        if args.initrd is not None:
            initrd = read_input_file(args.initrd, "initrd", limit)   # replaces an image's initramfs
        config = VmConfig(kernel=kernel, kernel_name=kernel_name, cmdline=cmdline, initrd=initrd,
                          vcpus=args.cpus, memory_mib=args.memory, protocol=args.boot_protocol,
                          pvm_workarounds=not args.no_pvm_workarounds, devices=tuple(args.device),
                          disks=tuple(DiskSpec.parse(text) for text in args.disk),
                          links=parse_links({e.option: getattr(args, e.option[2:].replace("-", "_"))
                                             for e in LINK_OPTIONS}))
        config.validate(host_max_vcpus=MAX_VCPUS)     # the host's own limit: checked by the builder
        detect_kind(kernel)                           # not a kernel: say so before anything is built
        output = ConsoleOutput.for_target(args.console,
                                          on_error=lambda message: say(f"vmkit: warning: {message}"))
    except ConfigError as exc:
        raise StartError(str(exc)) from None
    except BootError as exc:
        raise StartError(f"{kernel_name}: {exc}") from None
    if host.host_kind() == "pvm":
        notice(host.PVM_NOTICE)
        if not args.no_pvm_workarounds and is_linux(kernel):
            notice("vmkit: Linux runs in KVM's instruction emulator here: expect minutes, not milliseconds")
            if not syscall_fixed and syscall_probe_remembered() is False:
                notice("vmkit: warning: on this host `syscall` from guest ring 3 does not enter ring 0 "
                       "(PVM's paravirtual convention), so a stock Linux kernel boots but its userspace "
                       "is killed at the first system call; the kernels of `vmkit image build` carry a "
                       "patch for it")
    marker = ExitMarker(output.write) if args.image is not None else None
    sink = marker.write if marker is not None else output.write
    return RunPlan(config._replace(console_output=sink), kernel, output, marker)


class ExitMarker:
    """Passes console output on, and picks out the init's "VMKIT_EXIT_STATUS=N" line."""

    MARKER = b"VMKIT_EXIT_STATUS="

    def __init__(self, forward: Callable[[bytes], None]) -> None:
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


def _built_in_guest(name: str) -> tuple[bytes, str]:
    """The image of a built-in guest program (imported late: the builder is not needed for --kernel)."""
    from vmkit.guest import GuestBuildError, build_guest

    try:
        return build_guest(name).read_bytes(), f"built-in guest {name}"
    except GuestBuildError as exc:
        raise StartError(str(exc)) from None


def _linux_image(name: str, cmdline: str, command: list[str],
                 limit: int) -> tuple[bytes, str, bytes, str, bool]:
    """Kernel, name, initramfs and command line for `--image NAME [-- COMMAND]`, and whether its
    kernel makes system calls that `syscall` left in ring 3 (docs/linux-guests.md)."""
    from vmkit.images import kernel, store
    from vmkit.vmm.config import check_cmdline
    from vmkit.vmm.host_files import read_input_file

    try:
        image = store.load(name)
    except store.ImageError as exc:
        raise StartError(f"--image: {exc}") from None
    full = " ".join(part for part in ("console=ttyS0", cmdline, command_parameter(command)) if part)
    check_cmdline(full)
    patches = image.manifest.get("kernel_patches")
    syscall_fixed = isinstance(patches, list) and kernel.SYSCALL_PATCH in patches
    return (read_input_file(str(image.kernel), f"image {name}: kernel", limit), f"image {name}",
            read_input_file(str(image.initrd), f"image {name}: initramfs", limit), full, syscall_fixed)


def command_parameter(command: list[str]) -> str:
    """The kernel parameter that carries a command to the image's init, every argument exactly as
    given: shell-quoted (init evaluates it back into its argv, no shell runs the command) and base64,
    which a kernel command line carries untouched. "" for no command."""
    import base64
    import shlex

    return f"vmkit.cmd={base64.b64encode(shlex.join(command).encode()).decode()}" if command else ""


def syscall_reaches_ring0() -> bool | None:
    """Boot the guest kit's syscall_probe once: does `syscall` from ring 3 enter ring 0 here?
    None when the probe cannot run (no compiler for the guest kit, or the VM failed)."""
    from vmkit.guest import GuestBuildError, build_guest
    from vmkit.kvm.errors import KvmError
    from vmkit.vmm.builder import build_machine
    from vmkit.vmm.config import VmConfig

    output = bytearray()
    try:
        with build_machine(VmConfig(kernel=build_guest("syscall_probe").read_bytes(), memory_mib=8,
                                    console_output=output.extend)) as probe:
            probe.start()
            probe.wait(10)
    except (GuestBuildError, KvmError, OSError):
        return None
    text = output.decode(errors="replace")
    if "RESULT syscall_enters_ring0=" not in text:
        return None
    return "RESULT syscall_enters_ring0=1" in text


def syscall_probe_remembered() -> bool | None:
    """syscall_reaches_ring0(), run once per host boot: the answer belongs to the host's kernel, so
    it is kept in the cache under the host's boot id and release, not probed at every start."""
    from vmkit.cache import cache_root

    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return syscall_reaches_ring0()
    key = f"{boot_id} {os.uname().release}"
    remembered = cache_root() / "host" / "syscall-probe"
    try:
        saved_key, _, answer = remembered.read_text().rpartition(" ")
        if saved_key == key and answer in ("0", "1"):
            return answer == "1"
    except (OSError, ValueError):     # missing, or not text
        pass
    result = syscall_reaches_ring0()
    if result is not None:
        try:
            remembered.parent.mkdir(parents=True, exist_ok=True)
            remembered.write_text(f"{key} {int(result)}")
        except OSError:
            pass
    return result


def _stdin_usable() -> bool:
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    entry()
