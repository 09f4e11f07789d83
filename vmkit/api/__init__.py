"""vmkit's management plane: HTTP APIs over Unix sockets (vmkit.api.firecracker: Firecracker's)."""
