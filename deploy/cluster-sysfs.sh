#!/bin/sh
# Make /sys show the node's own network interfaces, then run "$@" (make cluster-up).
#
# Run by cluster-up.sh once per node, inside the node's network namespace and a new mount
# namespace (`unshare --mount=<file> --propagation slave`, kept by its file), which every
# process of the node then enters: the node's mounts (its storage pools, its containers')
# stay the node's, as on a host of its own, and one node never sees another's. Why /sys: sysfs shows the interfaces of the network namespace that
# mounted it, so after `nsenter --net` alone /sys/class/net still lists the host's; liblxc
# looks for /sys/class/net/<bridge>/bridge to tell a Linux bridge from Open vSwitch and,
# not finding the node's bridge there, failed every container start with a NIC.
set -eu
# A whole new sysfs over /sys (binding only class/net over the host's would leave /sys
# not "fully visible", and the kernel then refuses the sysfs an unprivileged container
# mounts); the cgroup tree under it is moved back on top.
d="$(mktemp -d /tmp/corral-sysfs.XXXXXX)"
mount --rbind /sys/fs/cgroup "$d"
mount -t sysfs sysfs /sys
mount --move "$d" /sys/fs/cgroup
rmdir "$d"
exec "$@"
