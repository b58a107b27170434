#!/bin/sh
# mmdebstrap --customize-hook (on the host, once every package is installed):
# copies guest/debian/rootfs/ over the chroot, runs in-chroot.sh inside it
# (units, server configs, initramfs), and drops the version pins.
set -eu
root=$1
src=${GODWIT_DEBIAN_DIR:?}
# Owned by root and mode 644/755 (by the exec bit, the one mode bit git
# keeps), whoever owns the checkout and whatever its umask was.
(cd "$src/rootfs" && find . -type f) | while IFS= read -r f; do
    if [ -x "$src/rootfs/$f" ]; then mode=755; else mode=644; fi
    install -D -o root -g root -m "$mode" "$src/rootfs/$f" "$root/$f"
done
cp "$src/hooks/in-chroot.sh" "$root/tmp/godwit-in-chroot.sh"
chroot "$root" /bin/sh -eu /tmp/godwit-in-chroot.sh </dev/null
rm -f "$root/tmp/godwit-in-chroot.sh" "$root/etc/apt/preferences.d/godwit-lock"
