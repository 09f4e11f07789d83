"""Layering rules: lower layers never import upper ones; the VM core uses only the standard library."""

import ast
import sys
from pathlib import Path

import vmkit

PACKAGE = Path(vmkit.__file__).parent
RANK = {"cache": 0, "buildproc": 0, "build_progress": 0, "kvm": 0, "memory": 1, "storage": 1, "arch": 2, "devices": 2, "vmm": 3,
        "guest": 3, "images": 3, "agent": 3, "cli": 4, "daemon": 4, "sdk": 4, "__main__": 4, "api": 5}
CORE = {"kvm", "memory", "storage", "arch", "devices", "vmm"}


def _modules():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        yield parts[0], path


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "vmkit":       # from vmkit import cli: the names are the modules
                yield from (f"vmkit.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_no_layer_imports_one_above_it():
    wrong = []
    for layer, path in _modules():
        for name in _imports(path):
            if name.startswith("vmkit."):
                target = name.split(".")[1]
                if RANK.get(target, len(RANK)) > RANK[layer]:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_vm_core_uses_only_the_standard_library():
    foreign = []
    for layer, path in _modules():
        if layer not in CORE:
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            if top != "vmkit" and top not in sys.stdlib_module_names:
                foreign.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not foreign, "\n".join(foreign)


def test_the_import_scan_sees_every_form_of_import(tmp_path):
    """The rule above is only as good as the scan: each form must name the module it brings in."""
    source = tmp_path / "sample.py"
    source.write_text("import vmkit.cli\nfrom vmkit import cli, kvm\nfrom vmkit.vmm.machine import Machine\n")
    assert list(_imports(source)) == ["vmkit.cli", "vmkit.cli", "vmkit.kvm", "vmkit.vmm.machine"]
