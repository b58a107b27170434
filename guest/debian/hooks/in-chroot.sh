# Runs inside the riscv64 chroot (under qemu-user) from customize.sh, after
# guest/debian/rootfs/ has been copied in. Decides what starts at boot,
# configures the servers and rebuilds the initramfs with our module list.
set -eu
log() { echo "debian(chroot): $*" >&2; }

# Boot to multi-user (there is no graphical target in this image).
systemctl set-default multi-user.target

# Our own units, the network and the serial console (autologin drop-in).
systemctl enable systemd-networkd.service godwit-ip.service godwit-ready.service serial-getty@ttyS0.service
# The servers the testbed talks to: all listen on every address.
systemctl enable nginx.service redis-server.service memcached.service iperf3.service netperf.service
sed -i -e 's/^bind .*/bind 0.0.0.0/' -e 's/^protected-mode .*/protected-mode no/' /etc/redis/redis.conf
grep -qx 'bind 0.0.0.0' /etc/redis/redis.conf && grep -qx 'protected-mode no' /etc/redis/redis.conf \
    || { log "redis.conf: bind/protected-mode lines not found"; exit 1; }
sed -i 's/^-l 127\.0\.0\.1$/-l 0.0.0.0/' /etc/memcached.conf
grep -qx -- '-l 0.0.0.0' /etc/memcached.conf || { log "memcached.conf: no -l line"; exit 1; }

# Nothing that slows boot or does periodic work a test VM does not need.
# mask, not disable: it also stops them being pulled in as dependencies,
# and works whether or not a unit is installed.
systemctl mask \
    apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
    dpkg-db-backup.timer man-db.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-timesyncd.service systemd-networkd-wait-online.service systemd-firstboot.service \
    systemd-logind.service getty@tty1.service getty-static.service \
    systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
    tmp.mount
# (systemd-logind needs D-Bus, which the image does not have, and only
# manages seats and VT gettys; without it Debian's getty-static.service would
# start gettys on tty2..6; binfmt_misc: nothing to register; tmp.mount:
# /tmp on disk, not in guest RAM.)

# ldconfig.service and the journal catalog update run at boot when /usr is
# newer than /etc/.updated and /var/.updated (ConditionNeedsUpdate=), which
# would be every boot of a -snapshot disk (tens of seconds under TCG). Both
# are up to date after installing, so record that now.
/usr/lib/systemd/systemd-update-done

# The initramfs, now with /etc/initramfs-tools/modules in place.
update-initramfs -u -k all

# Every module we list must be in the initramfs and in its /conf/modules (so
# it is loaded at boot), or else built into the kernel.
kver=$(ls /lib/modules)
unpacked=$(mktemp -d)
unmkinitramfs "/boot/initrd.img-$kver" "$unpacked"
initrd_root=$unpacked
[ -d "$unpacked/main" ] && initrd_root=$unpacked/main # an early (microcode) cpio comes first
for m in $(grep -v '^#' /etc/initramfs-tools/modules); do
    if grep -q "/$m\.ko" "/lib/modules/$kver/modules.builtin"; then
        log "module $m: built into the kernel"
    elif [ -n "$(find "$initrd_root" -name "$m.ko*")" ] \
        && awk -v m="$m" '$1 == m { found = 1 } END { exit !found }' "$initrd_root/conf/modules"; then
        log "module $m: in the initramfs, loaded at boot"
    else
        log "module $m is missing from the initramfs or from its /conf/modules"
        exit 1
    fi
done
rm -rf "$unpacked"
