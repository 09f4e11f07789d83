"""virtio-vsock (device type 19): guest sockets joined to host Unix sockets, as Firecracker does.

packet.py is the wire header, connection.py one stream's state and credit, muxer.py the Unix
socket side and the streams, device.py the three queues, spec.py the `--vsock` option, state.py
what a snapshot keeps.
"""
