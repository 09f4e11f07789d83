"""How a long build shows its progress: a bar with the steps done, the current line and the time
taken where a terminal is attached; the same lines as plain text when the output is piped."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

STEP = re.compile(r"\[(\d+)/(\d+)\]\s*(.*)")


class BuildProgress:
    """A context manager whose `line(text)` takes the builder's progress lines ("[1/2] kernel", then
    details). On a terminal they drive a rich progress bar; otherwise each is printed as it comes."""

    def __init__(self, prefix: str, stream: IO[str] | None = None, terminal: bool | None = None) -> None:
        self.prefix = prefix
        self._stream = stream if stream is not None else sys.stdout
        self._terminal = terminal if terminal is not None else _isatty(self._stream)
        self._progress: Any = None
        self._task: Any = None
        self._step = ""

    def __enter__(self) -> Callable[[str], None]:
        if self._terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(file=self._stream, force_terminal=True)
            self._progress = Progress(TextColumn("[bold]{task.fields[step]}"), BarColumn(bar_width=20),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("[dim]{task.description}"), console=console)
            self._progress.start()
            self._task = self._progress.add_task("", total=None, step=self.prefix)
        return self.line

    def line(self, text: str) -> None:
        if self._progress is None:
            _print(self._stream, f"{self.prefix}: {text}")
            return
        step = STEP.match(text)
        if step:
            done, total, name = int(step.group(1)) - 1, int(step.group(2)), step.group(3)
            from rich.markup import escape

            self._progress.update(self._task, completed=done, total=total,
                                  step=escape(f"{self.prefix} {name}"), description="")
        elif text.startswith("built image") or text.endswith("is up to date"):
            task = self._progress.tasks[0]
            self._progress.update(self._task, completed=task.total or 1, total=task.total or 1,
                                  description="")
            self._progress.console.print(f"{self.prefix}: {text}", markup=False, highlight=False)
        else:
            from rich.markup import escape

            self._progress.update(self._task, description=escape(text.strip()))

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _print(stream: IO[str], line: str) -> None:
    """A progress line; one that cannot be written is lost, and the work goes on."""
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):
        pass
