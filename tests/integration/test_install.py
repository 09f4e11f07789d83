"""A regular (non-editable) install, as users get it from a wheel, has everything vmkit needs."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def test_an_installed_vmkit_runs_its_guest_and_finds_its_image_inputs(tmp_path):
    source = tmp_path / "source"              # the tracked files only, as a fresh clone has them:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):  # no build/ left over from an earlier build hides a gap
        if name and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, vmkit = venv / "bin" / "python", venv / "bin" / "vmkit"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(source)], check=True,
                   stdout=subprocess.DEVNULL, timeout=600)
    environment = {"PATH": "/usr/bin:/bin", "VMKIT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([str(vmkit), "run", "--guest", "hello"], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr            # built from the installed C sources, and ran
    assert "RESULT cpus_online=1" in done.stdout
    probe = ("import vmkit, vmkit.images.kernel as k, vmkit.images.initramfs as i;"
             "print(vmkit.__file__);"
             "print(k.CONFIG_FRAGMENT.is_file(), i.INIT_SCRIPT.is_file(), sorted(k.patches()))")
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=environment,
                           cwd=tmp_path, check=True).stdout.splitlines()
    assert found[0].startswith(str(venv))                # the installed copy, not the source tree
    assert found[1] == f"True True {sorted(p.name for p in (source / 'vmkit/images/patches').glob('*.patch'))}"
