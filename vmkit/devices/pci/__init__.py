"""PCI: configuration space, the root complex (0xCF8/0xCFC and ECAM), and the host bridge."""
