"""Linux, end to end, with shared folders: one boot, two shares (read-only share0, writable share1)
that init mounts over virtio-9p; the guest reads, writes, and tries to leave the share.

Slow on PVM hosts (about two minutes per boot here), like test_linux_boot.py.
"""

import hashlib
import os
import re
import stat

import pytest

from tests.conftest import run_vmkit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
BOOT_TIMEOUT_S = 900

# Run from the read-only share itself (the kernel command line stays short). Each step prints a
# marker the test looks for; a step that must fail prints its marker only when it does.
GUEST_SCRIPT = """\
cat /mnt/share0/f
echo LISTING; ls /mnt/share0; echo END-LISTING
busybox sha256sum /mnt/share0/big
cat /mnt/share0/big > /mnt/share1/copy
echo new > /mnt/share1/g
mkdir /mnt/share1/dir && echo inside > /mnt/share1/dir/file && busybox mv /mnt/share1/dir/file /mnt/share1/moved
busybox rmdir /mnt/share1/dir && echo RMDIR-OK
echo gone > /mnt/share1/gone && busybox rm /mnt/share1/gone && echo RM-OK
busybox touch /mnt/share1/suid && busybox chmod 4755 /mnt/share1/suid
echo x > /mnt/share0/h || echo RO-WRITE-REFUSED
busybox touch /mnt/share0/sub/t || echo RO-TOUCH-REFUSED
echo "LINK=$(busybox readlink /mnt/share0/link-to-etc-passwd)"
cat /mnt/share0/link-to-etc-passwd || echo SYMLINK-NOT-HOSTS
cat /mnt/share0/up/passwd || echo RELATIVE-SYMLINK-NOT-HOSTS
cat /mnt/share0/hardlink || echo HARDLINK-REFUSED
cat /mnt/share0/sub/inner
echo SCRIPT-DONE
"""


def test_linux_mounts_reads_writes_and_stays_inside_its_shares(image, tmp_path):
    read_only, writable = tmp_path / "ro", tmp_path / "rw"
    read_only.mkdir()
    writable.mkdir()
    (read_only / "f").write_text("shared-content-from-the-host\n")
    (read_only / "check.sh").write_text(GUEST_SCRIPT)
    big = os.urandom(300_000)
    (read_only / "big").write_bytes(big)
    (read_only / "sub").mkdir()
    (read_only / "sub" / "inner").write_text("inner-file\n")
    (read_only / "link-to-etc-passwd").symlink_to("/etc/passwd")
    (read_only / "up").symlink_to("../../../../../../../../etc")
    secret = tmp_path / "outside-secret"
    secret.write_text("host-secret-never-shared\n")
    os.link(secret, read_only / "hardlink")

    done = run_vmkit("run", "--image", image, "--memory", "256", "--cmdline", "panic=-1",
                     "--share", str(read_only), "--share", f"{writable},rw",
                     "--", "sh", "/mnt/share0/check.sh", timeout=BOOT_TIMEOUT_S)
    out = done.stdout
    assert "SCRIPT-DONE" in out, out[-4000:] + done.stderr[-2000:]
    assert "cannot mount share" not in out
    # Reads: a file, a directory listing, 300 KB in many Rreads, a subdirectory.
    assert re.search(r"^shared-content-from-the-host\r?$", out, re.MULTILINE)
    listing = out.split("LISTING", 1)[1].split("END-LISTING", 1)[0].split()
    assert {"f", "big", "sub", "check.sh", "link-to-etc-passwd", "hardlink"} <= set(listing)
    assert f"{hashlib.sha256(big).hexdigest()}  /mnt/share0/big" in out
    assert re.search(r"^inner-file\r?$", out, re.MULTILINE)
    # Writes through the rw share land on the host, owned by the user running vmkit.
    assert (writable / "copy").read_bytes() == big
    assert (writable / "g").read_text() == "new\n"
    assert (writable / "moved").read_text() == "inside\n"
    assert not (writable / "dir").exists() and "RMDIR-OK" in out
    assert not (writable / "gone").exists() and "RM-OK" in out
    for name in ("copy", "g", "moved", "suid"):
        assert (writable / name).stat().st_uid == os.getuid()
    suid_mode = (writable / "suid").stat().st_mode
    assert suid_mode & 0o755 == 0o755 and not suid_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    # The read-only share refuses writes; nothing appeared on the host.
    assert "RO-WRITE-REFUSED" in out and "RO-TOUCH-REFUSED" in out
    assert not (read_only / "h").exists() and not (read_only / "sub" / "t").exists()
    # Escapes: symlinks are the guest's own (it resolves them in its own tree, where /etc/passwd
    # does not exist), and the hard link to a host file outside the share is refused.
    assert "LINK=/etc/passwd" in out
    assert "SYMLINK-NOT-HOSTS" in out and "RELATIVE-SYMLINK-NOT-HOSTS" in out
    assert "HARDLINK-REFUSED" in out
    assert "root:x:0:0" not in out and "host-secret-never-shared" not in out
    assert secret.read_text() == "host-secret-never-shared\n"
    assert done.returncode == 0, done.stderr
