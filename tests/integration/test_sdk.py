"""The Python SDK (vmkit.VM, vmkit.AsyncVM) and `vmkit exec`/`vmkit cp`'s errors, with guest-kit VMs in
a daemon of each test's own (tests/integration/test_daemon.py's fixture). Linux, with its exec agent,
is tests/e2e/test_sdk_linux.py.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import vmkit
from tests.agent_rig import HostAgent, agent_binary
from tests.integration.test_daemon import _alive
from tests.integration.test_daemon import daemon as daemon  # noqa: F401  (the fixture)
from vmkit.agent import AgentClient
from vmkit.cli import UsageError, build_parser
from vmkit.daemon.guest_commands import run_to_end
from vmkit.sdk.options import OPTION_OF_KEYWORD, VMOptions, keyword_named, run_arguments

pytestmark = pytest.mark.timeout(180)
DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


@pytest.fixture
def short_dir():
    """A directory with a short path, for Unix sockets (sun_path holds 108 bytes); removed after."""
    path = tempfile.mkdtemp(prefix="vs", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _names(daemon) -> list[str]:
    return [vm["name"] for vm in daemon.client.request("GET", "/vms?all=1")]


def test_with_block_runs_steers_and_removes_the_vm(daemon):
    with vmkit.VM(guest="serial_echo", name="sdk1", memory_mib=32, daemon_socket=daemon.socket) as vm:
        assert vm.name == "sdk1" and vm.state() == "running"
        record = vm.inspect()
        pid = record["pid"]
        assert _alive(pid) and record["machine"]["memory_mib"] == 32
        assert record["machine"]["vsock"] is None                   # a guest-kit VM gets no agent socket
        vm.pause()
        assert vm.state() == "paused"
        with pytest.raises(vmkit.VMStateError):
            vm.pause()
        with pytest.raises(vmkit.AgentUnavailable, match="no vsock device"):
            vm.exec(["true"])
        vm.resume()
        deadline = time.monotonic() + 10
        while b"READY" not in vm.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vm.logs() == b"READY\n"
        vm.send_console("hello sdk\n")                              # serial_echo echoes one line and exits
        assert vm.wait(timeout=20) == 1
        assert b"ECHO hello sdk" in vm.logs() and vm.status() == 1
        with pytest.raises(vmkit.VMNotRunning):
            vm.pause()
    assert not _alive(pid)
    assert _names(daemon) == [] and list((daemon.socket.parent / "vms").iterdir()) == []
    with pytest.raises(vmkit.VMNotFound):
        vmkit.VM.attach("sdk1", daemon_socket=daemon.socket)


def test_stop_remove_wait_and_attach(daemon):
    vm = vmkit.VM(guest="serial_echo", name="sdk2", daemon_socket=daemon.socket).start()
    again = vmkit.VM.attach("sdk2", daemon_socket=daemon.socket)
    assert again.inspect()["pid"] == vm.inspect()["pid"]
    with pytest.raises(vmkit.VMTimeout):
        vm.wait(timeout=0.3)
    with pytest.raises(vmkit.VMStateError, match="stop it first"):
        vm.remove()
    with pytest.raises(vmkit.VMStateError, match="started already"):
        vm.start()
    started = time.monotonic()
    assert vm.stop(timeout=0) == 143 and vm.state() == "exited" and again.wait() == 143   # stopped hard at once
    assert time.monotonic() - started < 5
    vm.remove()
    with pytest.raises(vmkit.VMNotFound):
        vm.inspect()
    vm.close()                                          # removed already: nothing to do
    with vmkit.VM(guest="power_button", cmdline="presses=1 poweroff=1", daemon_socket=daemon.socket) as button:
        while b"READY" not in button.logs():
            time.sleep(0.05)
        assert button.stop(timeout=60) == 0                # the guest powered off when its button was pressed
        assert b"PRESSED 1" in button.logs()
    hello = vmkit.VM(guest="hello", daemon_socket=daemon.socket).start()
    assert hello.wait(20) == 1 and b"hello from ring 3" in hello.logs()
    assert b"".join(hello.follow_logs()) == hello.logs()  # an ended VM's stream ends
    hello.close()
    assert _names(daemon) == []


def test_an_exception_inside_the_block_leaves_no_vm_and_no_process(daemon):
    pids = []
    with pytest.raises(RuntimeError, match="inside"):
        with vmkit.VM(guest="serial_echo", daemon_socket=daemon.socket, stop_timeout=0) as vm:
            pids.append(vm.inspect()["pid"])
            raise RuntimeError("inside")
    assert pids and not _alive(pids[0])
    assert _names(daemon) == [] and list((daemon.socket.parent / "vms").iterdir()) == []
    with pytest.raises(vmkit.VMNotRunning):              # a VM never started has no name yet
        _ = vmkit.VM(guest="hello", daemon_socket=daemon.socket).name


def test_start_errors_name_the_keyword_and_leave_nothing(daemon, tmp_path):
    long_name = "n" * 64                               # its state directory's vsock.sock is too long a path
    cases = [
        ({"guest": "hello", "memory_mib": 0}, "memory_mib", "--memory"),
        ({"guest": "hello", "vcpus": -1}, "vcpus", "--cpus"),
        ({"guest": "no_such_program"}, "guest", "no_such_program"),
        ({"kernel": "/nonexistent/kernel"}, "kernel", "does not exist"),
        ({"guest": "hello", "disks": ["/nonexistent.img"]}, "disks", "does not exist"),
        ({"guest": "hello", "disks": ["x,format=vhd"]}, "disks", "--disk"),
        ({"guest": "hello", "vsock": "/tmp/" + "v" * 200}, "vsock", "--vsock"),
        ({"guest": "hello", "networks": ["bogus"]}, "networks", "--net"),
        ({"guest": "hello", "shares": ["/nonexistent-dir"]}, "shares", "--share"),
        ({"guest": "hello", "boot_protocol": "bios"}, "boot_protocol", "--boot-protocol"),
        ({"guest": "hello", "command": ["true"]}, "image", "--image"),
        ({"guest": "hello", "name": "bad name"}, "name", "must match"),
        ({"image": "no-such-image"}, "image", "no-such-image"),
    ]
    for keywords, keyword, text in cases:
        with pytest.raises(vmkit.VMStartError) as failed:
            vmkit.VM(daemon_socket=daemon.socket, **keywords).start()
        assert failed.value.keyword == keyword and text in str(failed.value), (keywords, str(failed.value))
        assert isinstance(failed.value.__cause__, Exception)
    with pytest.raises(vmkit.VMStartError, match="longer than a Unix socket address") as too_long:
        vmkit.VM(image="linux", name=long_name, daemon_socket=daemon.socket).start()   # refused before any boot
    assert too_long.value.keyword == "name" and f"vms/{long_name}/vsock.sock" in str(too_long.value)
    vmkit.VM(guest="serial_echo", name="taken", daemon_socket=daemon.socket).start()
    with pytest.raises(vmkit.VMStartError) as taken:
        vmkit.VM(guest="hello", name="taken", daemon_socket=daemon.socket).start()
    assert taken.value.keyword == "name" and "in use" in str(taken.value)
    assert _names(daemon) == ["taken"]
    with pytest.raises(TypeError):
        vmkit.VM(guest="hello", disks="/one/string.img")   # type: ignore[arg-type]
    with pytest.raises(TypeError):
        vmkit.VM(image="linux", command="uname -a")        # type: ignore[arg-type]
    blocker = tmp_path / "file"
    blocker.write_text("")                             # no daemon can be started below a file
    with pytest.raises(vmkit.DaemonUnavailable):
        vmkit.VM.attach("x", daemon_socket=blocker / "daemon.sock")


def test_a_vm_whose_agent_never_answers_fails_its_start_with_its_console(daemon, short_dir):
    """What start() does when the agent it waits for does not come (here: guest-kit programs behind a
    vsock device, told to wait as for an image): the error ends with the console, and no VM is left."""
    sockets = short_dir
    ended = vmkit.VM(guest="hello", vsock=f"{sockets}/a.sock", daemon_socket=daemon.socket)
    ended.waits_for_agent = True
    with pytest.raises(vmkit.VMStartError, match="ended before its agent answered") as failed:
        ended.start()
    assert "hello from ring 3" in str(failed.value) and isinstance(failed.value.__cause__, vmkit.VMNotRunning)
    silent = vmkit.VM(guest="serial_echo", vsock=f"{sockets}/b.sock", ready_timeout=1, daemon_socket=daemon.socket)
    silent.waits_for_agent = True
    with pytest.raises(vmkit.VMTimeout, match="did not answer within 1 s") as late:
        silent.start()
    assert str(late.value).endswith("READY")
    assert _names(daemon) == []


def test_exec_and_cp_refuse_with_one_line_and_status_125(daemon, tmp_path, short_dir):
    sockets = short_dir
    daemon.ok("run", "-d", "-g", "serial_echo", "--name", "plain")
    for name in ("noagent", "asleep"):                    # a vsock device, but no agent inside
        daemon.ok("run", "-d", "-g", "serial_echo", "--name", name, "--vsock", f"{sockets}/{name}.sock")
    daemon.ok("pause", "asleep")
    daemon.ok("run", "-d", "-g", "hello", "--name", "gone", "--vsock", f"{sockets}/gone.sock")
    daemon.wait_state("gone", "exited")
    (tmp_path / "adir").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    cases = [
        (("exec", "plain", "--", "true"), "no vsock device"),
        (("exec", "nobody", "--", "true"), "no VM named 'nobody'"),
        (("exec", "plain"), "give the command"),
        (("exec", "-e", "=x", "plain", "--", "true"), "the name is missing"),
        (("exec", "plain", "--", ""), "argv"),
        (("cp", str(tmp_path / "file"), "plain:/" + "x" * 5000), "1 to 4096 bytes"),
        (("exec", "--agent-timeout", "1", "noagent", "--", "true"), "did not answer within 1 s"),
        (("exec", "asleep", "--", "true"), "is paused, not running"),
        (("exec", "gone", "--", "true"), "is exited, not running"),
        (("cp", str(tmp_path / "file"), str(tmp_path / "other")), "exactly one of"),
        (("cp", "plain:/a", "plain:/b"), "exactly one of"),
        (("cp", str(tmp_path / "adir"), "plain:/tmp/"), "directories are not supported"),
        (("cp", str(tmp_path / "missing"), "plain:/tmp/x"), "does not exist"),
        (("cp", "-", "plain:/tmp/x"), "not supported"),
        (("cp", str(tmp_path / "file"), "plain:"), "the path in the VM is missing"),
        (("cp", str(tmp_path / "file"), "plain:/tmp/x"), "no vsock device"),
        (("cp", "nobody:/etc/hostname", str(tmp_path)), "no VM named"),
    ]
    for args, text in cases:
        started = time.monotonic()
        done = daemon.cli(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 125, (args, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("vmkit: error:") and text in lines[0], (args, lines)
        assert time.monotonic() - started < 15, args
    assert not (tmp_path / "other").exists()


def test_exec_relays_output_stdin_and_status_with_the_real_agent(tmp_path):
    """`vmkit exec`'s relay loop, in a process of its own with pipes for stdin, stdout and stderr,
    against the agent binary run on this host (tests/agent_rig.py): output as it comes, stdin with
    -i, the exit status and a signal's 128 + N."""
    rig = HostAgent(tmp_path, agent_binary(tmp_path))
    script = textwrap.dedent(f"""
        import sys
        from vmkit.agent import AgentClient
        from vmkit.cli import StopSignals
        from vmkit.daemon.guest_commands import run_to_end
        StopSignals().install()                        # as `vmkit` installs them
        argv, interactive = eval(sys.argv[1]), sys.argv[2] == "1"
        process = AgentClient({rig.path!r}).start(argv, stdin=interactive)
        sys.exit(run_to_end(process, sys.stdin.fileno() if interactive else -1))
    """)

    def relay(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-c", script, repr(argv), "1" if stdin is not None else "0"],
                              input=stdin, capture_output=True, timeout=60,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    try:
        done = relay(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
        payload = random.Random(10).randbytes(600_000)
        done = relay(["sh", "-c", "cat; echo fed >&2"], stdin=payload)
        assert done.returncode == 0 and done.stdout == payload and done.stderr == b"fed\n"
        done = relay(["sh", "-c", "kill -TERM $$"])
        assert done.returncode == 143
        streamed = subprocess.Popen([sys.executable, "-c", script, repr(["sh", "-c", "echo first; sleep 30"]), "0"],
                                    stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:                                           # output comes before the command ends
            assert streamed.stdout is not None and streamed.stdout.readline() == b"first\n"
            streamed.send_signal(signal.SIGINT)        # Ctrl-C: 130, and the command is killed
            assert streamed.wait(10) == 130
            assert len(rig.statuses(10)) == 4
        finally:
            streamed.kill()
            streamed.wait()
        assert run_to_end(AgentClient(rig.path).start(["sh", "-c", "exit 300"]), -1) == 300 % 256
    finally:
        rig.close()


def test_async_vm_and_cancellation_leave_no_vm(daemon, tmp_path, short_dir):
    socket_path = daemon.socket

    async def scenario() -> None:
        async with vmkit.AsyncVM(guest="serial_echo", name="async1", daemon_socket=socket_path) as vm:
            assert await vm.state() == "running"
            await vm.pause()
            assert (await vm.inspect())["state"] == "paused"
            await vm.resume()
            await vm.send_console("async\n")
            assert await vm.wait(20) == 1
            chunks = [chunk async for chunk in vm.follow_logs()]
            assert b"ECHO async" in b"".join(chunks)
        assert _names(daemon) == []

        # cancelled while the daemon creates it
        task = asyncio.ensure_future(vmkit.AsyncVM(guest="serial_echo", name="cut", daemon_socket=socket_path).start())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert "cut" not in _names(daemon)

        # cancelled (by a timeout) while it waits for an agent that never answers
        vsock = f"{short_dir}/v.sock"
        waiting = vmkit.AsyncVM(guest="serial_echo", name="waits", vsock=vsock, daemon_socket=socket_path)
        waiting.vm.waits_for_agent = True
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiting.start(), 1.5)
        assert time.monotonic() - started < 8
        assert "waits" not in _names(daemon)

        # a cancelled exec kills the command (the agent here is the host rig, behind a running VM)
        rig = HostAgent(tmp_path, agent_binary(tmp_path))
        try:
            async with vmkit.AsyncVM(guest="serial_echo", daemon_socket=socket_path, stop_timeout=0) as host:
                host.vm._agent = AgentClient(rig.path)
                assert (await host.exec(["echo", "hi"])).stdout == b"hi\n"
                sleeper = asyncio.ensure_future(host.exec(["sleep", "30"]))
                await asyncio.sleep(0.5)
                started = time.monotonic()
                sleeper.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await sleeper
                assert time.monotonic() - started < 2
                assert len(rig.statuses(10)) == 2             # the agent killed `sleep 30` and ended
        finally:
            rig.close()
        assert _names(daemon) == []

    asyncio.run(scenario())


def test_keywords_become_the_run_options_the_parser_reads_back():
    """Seeded random keyword sets: the arguments they make, parsed by `vmkit run`'s own parser, give
    the same values back; and a bad value of each option is named by keyword_named."""
    parser = build_parser()
    rng = random.Random(20261125)
    texts = ["a", "b c", "-x", "--y", "x=1,ro", "", "é", "/p,ath"]
    for _ in range(300):
        keywords: dict = {}
        source = rng.choice(["image", "kernel", "guest", None])
        if source:
            keywords[source] = rng.choice(texts[:5]) or "k"
        for key in ("initrd", "cmdline", "vsock", "boot_protocol"):
            if rng.random() < 0.3:
                keywords[key] = rng.choice(texts)
        for key in ("vcpus", "memory_mib"):
            if rng.random() < 0.5:
                keywords[key] = rng.randint(1, 4096)
        for key in ("devices", "disks", "networks", "shares"):
            keywords[key] = [rng.choice(texts) for _ in range(rng.randint(0, 3))]
        keywords["pvm_workarounds"] = rng.random() < 0.5
        if source == "image" and rng.random() < 0.5:
            keywords["command"] = [rng.choice(texts) for _ in range(rng.randint(0, 4))]
        try:
            parsed = parser.parse_args(["run", *run_arguments(**keywords)])
        except UsageError as exc:                      # a value argparse refuses (a bad protocol)
            assert keyword_named(str(exc)) in keywords, exc
            continue
        assert parsed.image == keywords.get("image") and parsed.kernel == keywords.get("kernel")
        assert parsed.guest == keywords.get("guest") and parsed.initrd == keywords.get("initrd")
        assert parsed.cmdline == keywords.get("cmdline", "") and parsed.vsock == [v for v in [keywords.get("vsock")] if v is not None]
        assert parsed.cpus == keywords.get("vcpus", 1) and parsed.memory == keywords.get("memory_mib", 64)
        assert (parsed.device, parsed.disk, parsed.net, parsed.share) == (
            keywords["devices"], keywords["disks"], keywords["networks"], keywords["shares"])
        assert parsed.no_pvm_workarounds == (not keywords["pvm_workarounds"])
        command = keywords.get("command")
        assert parsed.guest_command == ([] if command is None else ["--", *command])
    for keyword, bad in (("vcpus", "two"), ("memory_mib", "-5"), ("boot_protocol", "bios")):
        with pytest.raises(UsageError) as refused:
            parser.parse_args(["run", *run_arguments(**{keyword: bad})])
        assert keyword_named(str(refused.value)) == keyword


def test_the_keywords_are_one_list():
    """VM()'s signature, VMOptions (AsyncVM's keywords) and the option table agree."""
    parameters = list(inspect.signature(vmkit.VM.__init__).parameters)[2:]
    assert parameters == list(VMOptions.__annotations__)
    assert set(OPTION_OF_KEYWORD) - {"image"} <= set(parameters)


def test_importing_vmkit_loads_no_sdk_and_vm_no_asyncio():
    done = subprocess.run([sys.executable, "-c", "import sys, vmkit; print(sorted(m for m in sys.modules "
                           "if m.startswith('vmkit'))); vmkit.VM; print('vmkit.sdk' in sys.modules, 'asyncio' in "
                           "sys.modules); vmkit.AsyncVM; print('asyncio' in sys.modules)"],
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.splitlines() == ["['vmkit']", "True False", "True"], done.stderr


def _examples(marker: str) -> list[str]:
    return re.findall(rf"<!-- example: {marker} -->\n```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_docs_guest_kit_examples_run(daemon):
    examples = _examples("guest-kit")
    assert len(examples) >= 2
    env = {**daemon.env, "VMKIT_DAEMON_SOCKET": str(daemon.socket), "PYTHONPATH": str(DOC.parents[1])}
    for example in examples:
        done = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60,
                              cwd=tempfile.gettempdir())
        assert done.returncode == 0, example + done.stdout + done.stderr
    assert _names(daemon) == []
    assert os.listdir(daemon.socket.parent / "vms") == []
