"""Sample where the guest's vCPUs are (RIP), to see where a slow boot spends its time.

A timer thread asks every vCPU runner for a sample at a fixed interval and kicks it out of
KVM_RUN; the runner reads RIP and goes back in. At the end, samples are attributed to the
ELF symbols of the guest kernel (when it has a symbol table) and written as a table.
"""

from __future__ import annotations

import bisect
import collections
import struct
import threading
from collections.abc import Callable
from pathlib import Path


class GuestProfiler:
    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.samples: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, rip: int) -> None:
        with self._lock:
            self.samples[rip] += 1

    def start(self, kick_all: Callable[[], None], request_samples: Callable[[], None]) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                request_samples()
                kick_all()

        self._thread = threading.Thread(target=loop, name="guest-profiler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(1)

    def report(self, symbols: list[tuple[int, str]], top: int = 40) -> str:
        addresses = [address for address, _ in symbols]
        by_symbol: collections.Counter[str] = collections.Counter()
        for rip, count in self.samples.items():
            i = bisect.bisect_right(addresses, rip) - 1
            by_symbol[symbols[i][1] if i >= 0 else f"{rip:#x}"] += count
        total = sum(self.samples.values()) or 1
        lines = [f"{total} samples every {self.interval_s * 1000:.0f} ms", "samples  share  symbol"]
        lines += [f"{count:7d} {100 * count / total:5.1f}%  {name}" for name, count in by_symbol.most_common(top)]
        return "\n".join(lines) + "\n"


def elf_symbols(data: bytes) -> list[tuple[int, str]]:
    """(address, name) of the code symbols in an ELF64 file's .symtab, sorted; [] if none, or if
    the file's section or symbol tables are damaged.

    Functions, and global labels without a type (assembly entry points such as entry_SYSCALL_64).
    """
    try:
        return _elf_symbols(data)
    except (struct.error, IndexError, ValueError):
        return []


def _elf_symbols(data: bytes) -> list[tuple[int, str]]:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    symbols: list[tuple[int, str]] = []
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != 2 or not entsize:                      # SHT_SYMTAB
            continue
        str_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            name_at, info, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, pos)
            kind, binding = info & 0xF, info >> 4
            if value and (kind == 2 or (kind == 0 and binding == 1)):   # STT_FUNC, or global STT_NOTYPE
                end = data.index(b"\0", str_offset + name_at)
                symbols.append((value, data[str_offset + name_at : end].decode(errors="replace")))
    return sorted(symbols)


def write_report(profiler: GuestProfiler, kernel: bytes, path: Path | str) -> None:
    Path(path).write_text(profiler.report(elf_symbols(kernel)))


