"""A Firecracker-compatible per-VM API and command line (`vmkit-firecracker`); see docs/firecracker-api.md.

Kept empty so the program's entry (main.py) imports nothing before its socket listens.
"""
