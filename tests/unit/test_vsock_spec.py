"""`--vsock PATH[,cid=N]`: the option's checks, opening PATH, and the device's snapshot state."""

import socket

import pytest

from vmkit.devices.state import NoState, StateError
from vmkit.devices.virtio.vsock.spec import VsockOpenError, VsockSpec, parse_option
from vmkit.devices.virtio.vsock.state import VsockState
from vmkit.vmm.config import ConfigError
from vmkit.vmm.links import LINK_OPTIONS, parse_links
from vmkit.vmm.vsock_option import parse_option as parse_cli_option


def test_the_option_is_in_the_link_table_and_parses_through_it():
    entry, = [e for e in LINK_OPTIONS if e.option == "--vsock"]
    assert entry.metavar == "PATH[,cid=N]"
    assert parse_links({"--vsock": ["/run/v.sock,cid=7"]}) == (VsockSpec("/run/v.sock", 7),)


@pytest.mark.parametrize("text,cid", [("/tmp/v", 3), ("/tmp/v,cid=3", 3), ("/tmp/v,cid=4294967294", 4294967294),
                                      ("rel/v.sock,cid=1000", 1000)])
def test_good_values(text, cid):
    assert parse_option(text, 0) == VsockSpec(text.split(",")[0], cid)


@pytest.mark.parametrize("text,message", [
    ("", "the path is missing"), (",cid=3", "the path is missing"),
    ("/tmp/v,cid=0", "cid='0'"), ("/tmp/v,cid=1", "cid='1'"), ("/tmp/v,cid=2", "cid='2'"),
    ("/tmp/v,cid=4294967295", "cid='4294967295'"), ("/tmp/v,cid=-3", "cid='-3'"), ("/tmp/v,cid=x", "cid='x'"),
    ("/tmp/v,cid=", "cid=''"), ("/tmp/v,cid", "unknown option 'cid'"), ("/tmp/v,port=3", "unknown option 'port=3'"),
    ("/" + "a" * 100, "longer than a Unix socket address allows"),
])
def test_bad_values_are_config_errors_naming_the_part(text, message):
    with pytest.raises(ConfigError, match=f"--vsock {text!r}: .*{message}".replace("[", r"\[").replace("(", r"\(")):
        parse_cli_option(text, 0)


def test_a_second_vsock_is_refused():
    with pytest.raises(ConfigError, match="one vsock device"):
        parse_cli_option("/tmp/b", 1)


def test_open_listens_at_path_and_close_removes_it(tmp_path):
    path = tmp_path / "v"
    device = VsockSpec(str(path)).open()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(str(path))
    probe.close()
    device.close()
    assert not path.exists()


def test_a_stale_socket_is_replaced_a_live_one_or_another_file_refused(tmp_path):
    path = tmp_path / "v"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))                                          # bound, nobody listens
    stale.close()
    VsockSpec(str(path)).open().close()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen()
    with pytest.raises(VsockOpenError, match="another program listens"):
        VsockSpec(str(path)).open()
    live.close()
    path.unlink()
    path.write_text("precious")
    with pytest.raises(VsockOpenError, match="not a socket"):
        VsockSpec(str(path)).open()
    assert path.read_text() == "precious"
    with pytest.raises(VsockOpenError, match="cannot listen there"):
        VsockSpec(str(tmp_path / "missing" / "v")).open()


def test_state_round_trip_and_untrusted_restore(tmp_path):
    device = VsockSpec(str(tmp_path / "v"), 42).open()
    state = device.save()
    assert state == VsockState(42)
    device.restore(state)
    assert device.muxer.reset_requested                            # streams are not saved: they end
    for bad, message in ((VsockState(41), "not this device's"), (VsockState(2), "from 3 to"),
                         (VsockState(True), "from 3 to"), (VsockState("42"), "from 3 to"),
                         (VsockState(1 << 32), "from 3 to"), (NoState(), "not a VsockState")):
        with pytest.raises(StateError, match=message):
            device.restore(bad)
    device.close()


def test_a_restore_tells_the_driver_its_streams_are_gone(tmp_path):
    import socket as sockets

    from tests.unit.vsock_rig import Guest, LoopHost
    from vmkit.devices.virtio.queue import VirtqueueError

    path = str(tmp_path / "v")
    device = VsockSpec(path).open()
    host = LoopHost()
    guest = Guest(device, host)
    guest.post_rx()
    guest.post_events([4, 8])
    assert guest.events() == []                                    # no event without a reason
    client = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    client.connect(path)
    client.sendall(b"CONNECT 5000\n")
    client.settimeout(2)
    host.pump()
    assert device.muxer.conns
    device.restore(device.save())
    assert guest.events() == []                                    # sent on the I/O thread, once it runs
    for timer in host.timers:
        timer()
    assert guest.events() == [(4, b"\0\0\0\0")]                    # VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    assert client.recv(16) == b"" and not device.muxer.conns
    device.transport_reset()
    guest.serve(2)                                                 # the 8-byte buffer takes the next one
    assert guest.events() == [(4, b"\0\0\0\0")] * 2
    with pytest.raises(VirtqueueError, match="3 device-writable bytes, not 4"):
        device.transport_reset()
        guest.post_events([3])
    device.close()
    guest.close()
