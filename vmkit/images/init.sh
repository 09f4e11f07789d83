#!/bin/sh
# vmkit's init: mount what commands need, run the command given as vmkit.cmd= on the kernel
# command line, print its exit status as a marker the host reads, and power the VM off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
# Shared folders (vmkit run --share): mount each virtio-9p tag at /mnt/TAG.
for tag_file in /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; do
    [ -e "$tag_file" ] || continue
    tag=$(tr -d '\000\n' < "$tag_file")
    mkdir -p "/mnt/$tag"
    mount -t 9p -o trans=virtio,version=9p2000.L "$tag" "/mnt/$tag" || echo "vmkit-init: cannot mount share $tag"
done
# The command: `vmkit run --image NAME -- ARGV...` passes ARGV shell-quoted and base64-encoded as
# vmkit.cmd=, so every argument arrives exactly as given (spaces, quotes, newlines and all).
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        --) break ;;
        vmkit.cmd=*) command_b64=${arg#vmkit.cmd=} ;;
    esac
done
if [ -n "$command_b64" ]; then
    command_text=$(echo "$command_b64" | base64 -d)
    eval "set -- $command_text"
else
    command_text=sh
    set -- sh
fi
echo "vmkit-init: running: $command_text"
"$@"
status=$?
echo "VMKIT_EXIT_STATUS=$status"
poweroff -f
