"""The guest profiler's symbol table reader and its per-symbol report."""

from vmkit.guest import build_guest
from vmkit.vmm.guest_profiler import GuestProfiler, elf_symbols


def test_symbols_of_a_guest_image_include_functions_and_asm_entry_points():
    symbols = {name: address for address, name in elf_symbols(build_guest("hello").read_bytes())}
    assert symbols["main"] > 0x100000
    assert symbols["linux64_start"] == 0x100200          # a global asm label (STT_NOTYPE)
    assert elf_symbols(b"not an elf") == []


def test_report_attributes_samples_to_the_enclosing_symbol():
    profiler = GuestProfiler(interval_s=0.01)
    for rip, times in ((0x1010, 3), (0x1020, 1), (0x2005, 2), (0x10, 1)):
        for _ in range(times):
            profiler.record(rip)
    report = profiler.report([(0x1000, "alpha"), (0x2000, "beta")])
    lines = report.splitlines()
    assert lines[0] == "7 samples every 10 ms"
    assert lines[2].split() == ["4", "57.1%", "alpha"]
    assert lines[3].split() == ["2", "28.6%", "beta"]
    assert "0x10" in report                               # below every symbol: shown as an address
