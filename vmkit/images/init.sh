#!/bin/sh
# vmkit's init: mount what commands need, run the command given after "--" on the kernel
# command line, print its exit status as a marker the host reads, and power the VM off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "vmkit-init: running: $*"
if [ $# -eq 0 ]; then
    set -- sh
fi
sh -c "$*"
status=$?
echo "VMKIT_EXIT_STATUS=$status"
poweroff -f
