"""Emulated devices and the buses that route guest accesses to them."""
