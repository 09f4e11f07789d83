#!/bin/sh
# vmkit's init: mount what commands need, run the command given after "--" on the kernel
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
# The exec agent (docs/agent.md), in the background, when the VM has a vsock device: its virtio
# device tells, not /dev/vsock (the vsock core makes that one with or without a device).
for vsock_device in /sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*; do
    [ -e "$vsock_device" ] || break
    vmkit-agent </dev/null &
    break
done
echo "vmkit-init: running: $*"
if [ $# -eq 0 ]; then
    set -- sh
fi
sh -c "$*"
status=$?
echo "VMKIT_EXIT_STATUS=$status"
poweroff -f
