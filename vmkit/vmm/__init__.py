"""The virtual machine monitor: builder, lifecycle, vCPU threads."""
