"""virtio 1.x devices: split virtqueues, the PCI transport, and the devices themselves."""
