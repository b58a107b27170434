#!/bin/sh
# mmdebstrap --essential-hook (on the host, after the Essential packages are
# installed and before the rest, the kernel among them): puts initramfs-tools'
# MODULES=list in place first, so the initramfs the kernel's postinst builds
# is the small one (MODULES=most would take minutes under qemu-user, only to
# be rebuilt by customize.sh). conf.d/godwit.conf belongs to no package, so
# dpkg does not mind finding it there.
set -eu
root=$1
src=${GODWIT_DEBIAN_DIR:?}
mkdir -p "$root/etc/initramfs-tools/conf.d"
cp "$src/rootfs/etc/initramfs-tools/conf.d/godwit.conf" "$root/etc/initramfs-tools/conf.d/"
