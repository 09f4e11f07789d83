"""`python3 -m vmkit.api.firecracker`: the same program as `vmkit-firecracker`."""

from vmkit.api.firecracker.main import entry

entry()
