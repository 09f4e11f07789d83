"""virtio-9p: a host directory shared with the guest over 9P2000.L (docs/shared-folders.md).

wire.py decodes and encodes messages, fs.py is the jail every name is resolved in, fids.py holds
the guest's handles, server.py answers messages, device.py is the virtio device around it.
"""
