"""The initramfs: busybox-static, a few applet links, and vmkit's init, as an uncompressed cpio."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from vmkit.images.cpio import CpioWriter

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("init.sh")
# A static vsock client and echo server for vsock checks, compiled here with the host's gcc.
VSOCK_PROBE_SOURCE = Path(__file__).with_name("vsock_probe.c")
# The guest exec agent (docs/agent.md), started by init when the VM has a vsock device.
AGENT_SOURCE = Path(__file__).with_name("vmkit_agent.c")
# The ACPI power button's watcher, started by init: a KEY_POWER press sends init SIGUSR2.
POWER_BUTTON_SOURCE = Path(__file__).with_name("power_button.c")
# udhcpc's script (init runs udhcpc for a NIC without a static address): apply the lease.
DHCP_SCRIPT = b"""#!/bin/sh
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for gateway in $router; do
            ip route add default via "$gateway" dev "$interface" && break
        done
        [ -z "$dns" ] || for server in $dns; do echo "nameserver $server"; done > /etc/resolv.conf
        ;;
esac
exit 0
"""
# Links made at build time: on PVM hosts every system call the guest makes costs emulated
# kernel work, so init does not run `busybox --install`. Other applets: `busybox NAME ...`.
APPLETS = (
    "sh", "mount", "umount", "poweroff", "reboot", "echo", "cat", "ls", "uname", "sleep", "true",
    "false", "mkdir", "dmesg", "grep", "nproc", "free", "env", "printf", "test", "[", "head",
    "tail", "wc", "date", "id", "hostname", "ps", "df", "sync", "tr", "base64",
    "ip", "udhcpc", "wget", "nc", "kill",
)


class InitramfsError(RuntimeError):
    """The initramfs cannot be built (busybox-static is missing or not static)."""


def find_busybox() -> Path:
    for candidate in BUSYBOX_PATHS:
        path = Path(candidate)
        if path.is_file():
            data = path.read_bytes()
            if b"ld-linux" in data[:4096] or b"/lib64/ld-" in data:
                continue  # dynamically linked: useless in an initramfs without libc
            return path
    raise InitramfsError(
        "a static busybox is needed for the initramfs: apt-get install busybox-static"
    )


def build_static(source: Path) -> bytes:
    """A C program that makes its own system calls (no libc linked) as a static executable."""
    with tempfile.TemporaryDirectory(prefix="vmkit-static-") as work:
        output = Path(work) / source.stem
        built = subprocess.run(["gcc", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie",
                                "-no-pie", "-fno-tree-loop-distribute-patterns", "-Os", "-s", "-o", str(output),
                                str(source)], capture_output=True, text=True)
        if built.returncode:
            raise InitramfsError(f"cannot build {source.name}: {built.stderr.strip()}")
        return output.read_bytes()


def build_vsock_probe() -> bytes:
    """vsock_probe.c as a static executable (a few KiB)."""
    return build_static(VSOCK_PROBE_SOURCE)


def build_agent() -> bytes:
    """vmkit_agent.c as a static executable (about 14 KiB)."""
    return build_static(AGENT_SOURCE)


def build_initramfs(busybox: Path | None = None) -> bytes:
    busybox = busybox or find_busybox()
    archive = CpioWriter()
    for directory in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "root", "usr", "usr/bin"):
        archive.directory(directory)
    archive.device("dev/console", 0o600, 5, 1)
    archive.device("dev/null", 0o666, 1, 3)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in APPLETS:
        archive.symlink(f"bin/{applet}", "busybox")
    archive.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    archive.file("bin/vsock_probe", build_vsock_probe(), 0o755)
    archive.file("bin/vmkit-agent", build_agent(), 0o755)
    archive.file("etc/udhcpc.sh", DHCP_SCRIPT, 0o755)
    archive.file("bin/vmkit-power-button", build_static(POWER_BUTTON_SOURCE), 0o755)
    return archive.finish()
