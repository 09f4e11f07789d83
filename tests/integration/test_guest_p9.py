"""The guest kit's virtio-9p driver (runtime/virtio_9p.c) and p9_bench over a shared directory the
host prepares and reads back: against vmkit's device, and with `--vmm qemu` against QEMU's
virtio-9p-pci (security_model=none)."""

import subprocess

import pytest

from tests.conftest import QEMU_MICROVM, Finished, run_vmkit
from vmkit.guest import build_guest

OPS = 40
BS = 65536


@pytest.fixture
def share_boot(request):
    """share_boot(directory, tag, cmdline) -> Finished: p9_bench with `directory` shared rw as `tag`."""
    vmm = request.config.getoption("--vmm")

    def run(directory, tag: str, cmdline: str) -> Finished:
        image = str(build_guest("p9_bench"))
        if vmm == "vmkit":
            return run_vmkit("run", "--kernel", image, "--memory", "64", "--share", f"{directory},tag={tag},rw",
                             "--cmdline", cmdline)
        machine = QEMU_MICROVM[3] + ",pcie=on"
        command = [*QEMU_MICROVM[:3], machine, *QEMU_MICROVM[4:], "-m", "64", "-kernel", image,
                   "-fsdev", f"local,id=fs0,path={directory},security_model=none",
                   "-device", f"virtio-9p-pci,fsdev=fs0,mount_tag={tag},disable-legacy=on",
                   "-append", f"{cmdline} pci_ecam=0xe0000000"]
        proc = subprocess.run(command, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        return Finished(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    return run


def test_p9_bench_reads_and_writes_the_shared_directory(share_boot, tmp_path):
    data = bytes(i % 251 for i in range(1 << 20))
    (tmp_path / "data").write_bytes(data)
    done = share_boot(tmp_path, "bench-share", f"ops={OPS} bs={BS} msize=131072")
    results = done.results()
    assert results.get("p9_bench") == "done", done.stdout[-2000:] + done.stderr[-1000:]
    assert results["tag"] == "bench-share" and results["msize"] == "131072"
    for phase in ("read", "write", "getattr", "walk"):
        assert results[f"{phase}_ops"] == str(OPS)
    assert done.returncode == 1                                       # exit(0) through the debug-exit port
    assert (tmp_path / "data").read_bytes() == data                   # read-only use left it alone
    out = (tmp_path / "out").read_bytes()
    assert len(out) == OPS * BS                                       # every Twrite landed
    assert out[:BS] == data[(OPS - 1) * BS % len(data):][:BS]         # the buffer the last read filled
