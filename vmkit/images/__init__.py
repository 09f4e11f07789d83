"""Guest images built from distribution packages: a microVM Linux kernel and an initramfs."""
