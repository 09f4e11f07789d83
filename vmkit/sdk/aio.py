"""vmkit.AsyncVM: VM's API for asyncio.

Each call runs the blocking VM method in a worker thread (asyncio.to_thread), so the event loop
never waits on the daemon or the agent. Cancelling a call never leaks a VM: the thread is let
finish (a start that was creating the VM removes it; leaving `async with` removes it even when
cancelled), then the cancellation is raised. A cancelled exec kills the command within 0.1 s; a
cancelled start stops waiting for the agent as soon.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

from vmkit.agent import AgentClient, ExecResult
from vmkit.agent.client import Stdin
from vmkit.sdk.errors import VMTimeout
from vmkit.sdk.options import StrPath, VMOptions
from vmkit.sdk.vm import VM

T = TypeVar("T")


async def in_thread(func: Callable[[], T], stop: threading.Event | None = None) -> T:
    """func() in a worker thread, run to its end. A cancellation of the caller sets `stop` (for a
    func that watches it), waits for the thread, then is raised; the thread's result is dropped."""
    task = asyncio.ensure_future(asyncio.to_thread(func))
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:
            cancelled = exc
            if stop is not None:
                stop.set()
    if cancelled is not None:
        if not task.cancelled():
            task.exception()                           # retrieved: the cancellation wins
        raise cancelled
    return task.result()


class AsyncVM:
    """The VM API for asyncio: the same keywords as VM, each method a coroutine.

    `async with AsyncVM(image="linux") as vm: result = await vm.exec(["uname", "-a"])`
    """

    def __init__(self, image: str | None = None, **options: Unpack[VMOptions]) -> None:
        self.vm = VM(image, **options)

    @classmethod
    async def attach(cls, name: str, *, daemon_socket: StrPath | None = None) -> AsyncVM:
        """The daemon's VM `name`, made elsewhere; VMNotFound if there is none."""
        found = await in_thread(lambda: VM.attach(name, daemon_socket=daemon_socket))
        made = cls.__new__(cls)
        made.vm = found
        return made

    def __repr__(self) -> str:
        return f"<vmkit.AsyncVM {self.vm!r}>"

    async def __aenter__(self) -> AsyncVM:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    @property
    def name(self) -> str:
        return self.vm.name

    async def start(self) -> AsyncVM:
        """As VM.start(); cancelled, it removes the VM it made."""
        vm = self.vm
        stop = threading.Event()
        try:
            await in_thread(vm.create)
            if vm.waits_for_agent and vm.ready_timeout > 0:
                await in_thread(lambda: vm.wait_ready(vm.ready_timeout, stop), stop)
        except BaseException:
            await in_thread(vm.discard_quietly)
            raise
        return self

    async def wait_ready(self, timeout: float) -> str:
        stop = threading.Event()
        return await in_thread(lambda: self.vm.wait_ready(timeout, stop), stop)

    async def pause(self) -> None:
        await in_thread(self.vm.pause)

    async def resume(self) -> None:
        await in_thread(self.vm.resume)

    async def stop(self, timeout: float | None = None) -> int | None:
        return await in_thread(lambda: self.vm.stop(timeout))

    async def remove(self, force: bool = False) -> None:
        await in_thread(lambda: self.vm.remove(force))

    async def close(self) -> None:
        await in_thread(self.vm.close)

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the VM ends; its exit status. VMTimeout after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.02
        while True:
            record = await self.inspect()
            if record.get("state") == "exited" and record.get("exit") is not None:
                status = record.get("status")
                return status if isinstance(status, int) else None
            if deadline is not None and loop.time() >= deadline:
                raise VMTimeout(f"VM {self.name!r} is still {record.get('state')} after {timeout:g} s")
            await asyncio.sleep(pause if deadline is None else min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, 0.5)

    async def inspect(self) -> dict[str, Any]:
        return await in_thread(self.vm.inspect)

    async def state(self) -> str:
        return await in_thread(self.vm.state)

    async def status(self) -> int | None:
        return await in_thread(self.vm.status)

    async def logs(self) -> bytes:
        return await in_thread(self.vm.logs)

    async def follow_logs(self) -> AsyncIterator[bytes]:
        """The console output as it comes, until the VM ends. A worker thread reads the stream; if
        the iteration is abandoned it ends with the VM or the next output."""
        chunks = await in_thread(self.vm.follow_logs)
        end = object()
        while True:
            chunk = await asyncio.to_thread(next, chunks, end)
            if chunk is end:
                return
            assert isinstance(chunk, bytes)
            yield chunk

    async def send_console(self, text: str) -> None:
        await in_thread(lambda: self.vm.send_console(text))

    async def agent(self) -> AgentClient:
        return await in_thread(lambda: self.vm.agent)

    async def exec(self, argv: Iterable[str | bytes], *, env: Mapping[str, str] | None = None,
                   cwd: str | None = None, stdin: Stdin | None = None, timeout: float | None = None,
                   replace_env: bool = False) -> ExecResult:
        """As VM.exec(); cancelled, the command is killed."""
        stop = threading.Event()
        return await in_thread(lambda: self.vm.exec_until(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout,
                                                          replace_env=replace_env, cancelled=stop), stop)

    async def copy_in(self, local: StrPath, remote: str, mode: int | None = None,
                      timeout: float | None = None) -> int:
        return await in_thread(lambda: self.vm.copy_in(local, remote, mode, timeout))

    async def copy_out(self, remote: str, local: StrPath, timeout: float | None = None) -> int:
        return await in_thread(lambda: self.vm.copy_out(remote, local, timeout))

    async def read_file(self, remote: str, timeout: float | None = None) -> bytes:
        return await in_thread(lambda: self.vm.read_file(remote, timeout))

    async def write_file(self, remote: str, data: bytes, mode: int = 0o644, timeout: float | None = None) -> int:
        return await in_thread(lambda: self.vm.write_file(remote, data, mode, timeout))
