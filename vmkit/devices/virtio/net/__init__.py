"""virtio-net (network device, type 1): the device, its frame header, and the host backends."""
