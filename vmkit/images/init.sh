#!/bin/sh
# vmkit's init: mount what commands need, run the command given as vmkit.cmd= on the kernel
# command line, print its exit status as a marker the host reads, and power the VM off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
# The ACPI power button (vmkit stop): on a press vmkit-power-button sends SIGUSR2 to init (busybox
# init's power-off signal); init then stops every process, syncs, unmounts the disks and shares,
# and powers off. The command runs in the background so that init, waiting for it, acts on the
# signal at once.
shut_down() {
    trap '' USR2
    echo "vmkit-init: power button: stopping processes, unmounting file systems, powering off"
    kill -TERM -1 2>/dev/null
    (sleep 5; kill -KILL -1 2>/dev/null) &
    [ -z "$command_pid" ] || wait "$command_pid"
    kill -KILL -1 2>/dev/null
    sync
    mounted=
    while read -r device mount_point fs_type rest; do
        case "$device:$fs_type" in /dev/*|*:9p) mounted="$mount_point $mounted" ;; esac
    done < /proc/mounts
    for mount_point in $mounted; do
        umount -r "$mount_point" || echo "vmkit-init: cannot unmount $mount_point"
    done
    echo "vmkit-init: powering off"
    poweroff -f
}
trap shut_down USR2
if [ -e /dev/input/event0 ]; then
    vmkit-power-button &
fi
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
# The kernel command line's vmkit.* words (no globbing: a word is never a pattern). The command:
# `vmkit run --image NAME -- ARGV...` passes ARGV shell-quoted and base64-encoded as vmkit.cmd=, so
# every argument arrives exactly as given (spaces, quotes, newlines and all).
# Networks (vmkit run --net): every NIC up. eth0 takes vmkit.ip=ADDR/PREFIX from the kernel
# command line, ethN vmkit.ipN=ADDR/PREFIX, and vmkit.gw=ADDR is the default route; a NIC without
# an address asks DHCP (passt answers it) when the kernel has packet sockets.
set -f
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        --) break ;;
        vmkit.ip=*) echo "${arg#*=}" > /tmp/.vmkit-ip-eth0 ;;
        vmkit.ip[0-9]=*) key=${arg%%=*}; echo "${arg#*=}" > "/tmp/.vmkit-ip-eth${key#vmkit.ip}" ;;
        vmkit.gw=*) net_gw=${arg#vmkit.gw=} ;;
        vmkit.cmd=*) command_b64=${arg#vmkit.cmd=} ;;
    esac
done
set +f
for nic_dir in /sys/class/net/eth*; do
    [ -e "$nic_dir" ] || continue
    nic=${nic_dir##*/}
    address=
    [ ! -e "/tmp/.vmkit-ip-$nic" ] || read -r address < "/tmp/.vmkit-ip-$nic"
    ip link set "$nic" up
    if [ -n "$address" ]; then
        ip addr add "$address" dev "$nic"
    elif [ -e /proc/net/packet ]; then
        udhcpc -i "$nic" -n -q -t 3 -T 2 -s /etc/udhcpc.sh >/dev/null 2>&1 || echo "vmkit-init: no DHCP answer on $nic"
    else
        echo "vmkit-init: $nic has no address (vmkit.ip${nic#eth}=ADDR/PREFIX; no packet sockets for DHCP)"
    fi
done
[ -z "$net_gw" ] || ip route add default via "$net_gw"
if [ -n "$command_b64" ]; then
    command_text=$(echo "$command_b64" | base64 -d)
    eval "set -- $command_text"
else
    command_text=sh
    set -- sh
fi
echo "vmkit-init: running: $command_text"
exec 3<&0
"$@" <&3 3<&- &
command_pid=$!
wait "$command_pid"
status=$?
echo "VMKIT_EXIT_STATUS=$status"
poweroff -f
