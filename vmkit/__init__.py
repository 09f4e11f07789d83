"""vmkit: a virtual machine monitor on Linux KVM, scriptable from Python."""

__version__ = "0.1.0"
