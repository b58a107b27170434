#!/usr/bin/env bash
# Builds the Godwit Debian guest: a bootable Debian 13 (trixie) riscv64 root
# file system (ext4, raw image, no partition table: root=/dev/vda) with the
# stock Debian kernel, its initramfs, systemd and the testbed's servers, plus
# the kernel, initrd and OpenSBI copied out of it for the VMM to load.
#
# Cached outside the checkout, keyed by a hash of its inputs (this directory:
# script, hooks, rootfs/ overlay, packages.list, packages.lock; the host's
# mmdebstrap and e2fsprogs versions):
#   $GODWIT_CACHE/debian/<hash>/{Image,vmlinuz,initrd.img,disk.img,fw_dynamic.bin,...}
# and $GODWIT_CACHE/debian/default/ links to the newest. A second run with the
# same inputs does no work. See README.md beside this script.
#
# Usage: guest/debian/build.sh [--print-paths] [--update-lock]
#   --print-paths  print kernel=... initrd=... disk=... bios=... at the end
#   --update-lock  resolve the newest packages on the mirror instead of the
#                  versions in packages.lock, and rewrite packages.lock
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${GODWIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/godwit}
deb_cache=$cache/debian
lock=$here/packages.lock

suite=trixie
arch=riscv64
# Any mirror of Debian's archive with trixie on it (the versions come from
# packages.lock, so the mirror is not part of the cache key).
mirror=${GODWIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
disk_size=2G # sparse; about 1 GiB of it is used
# Bump when the steps below change the image in a way the hashed files don't show.
RECIPE=1
# Where Debian's opensbi package puts the firmware QEMU/Godwit load with -bios.
opensbi_path=usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin

log() { printf 'debian: %s\n' "$*" >&2; }
die() { printf 'debian: error: %s\n' "$*" >&2; exit 1; }

need_pkgs=(mmdebstrap qemu-user-static binfmt-support arch-test e2fsprogs util-linux debian-archive-keyring)
ensure_packages() {
    local missing=()
    for p in "${need_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        [ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]} (or install them yourself)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# mmdebstrap runs the riscv64 maintainer scripts inside the chroot, which
# needs qemu-user registered with binfmt_misc. In a container without systemd
# nothing mounts binfmt_misc, so installing qemu-user-static registers nothing.
ensure_binfmt() {
    arch-test "$arch" >/dev/null 2>&1 && return 0
    log "registering qemu-$arch with binfmt_misc"
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
            || die "cannot mount binfmt_misc (needed to run $arch programs through qemu-user)"
    fi
    update-binfmts --enable "qemu-$arch" >/dev/null 2>&1 || true
    arch-test "$arch" >/dev/null 2>&1 \
        || die "this host cannot run $arch binaries (arch-test $arch: $(arch-test "$arch" 2>&1 | tail -n 1)); need qemu-user-static with binfmt_misc"
}

# The cache key. $1 is the lock file to hash (packages.lock, or the new one
# while --update-lock builds).
image_hash() {
    local lockfile=$1
    {
        echo "debian-recipe $RECIPE $suite $arch $disk_size"
        dpkg-query -W -f='${Package} ${Version}\n' mmdebstrap e2fsprogs
        # Every file here that goes into the image, and whether it is
        # executable (the only mode bit git keeps, so a checkout with another
        # umask hashes the same); not the docs, the boot check or the old lock.
        (cd "$here" && find . -type f ! -name README.md ! -name qemu-boot.sh ! -name packages.lock \
            \( -perm -u+x -printf 'x %p\n' -o -printf '- %p\n' \) | LC_ALL=C sort)
        (cd "$here" && find . -type f ! -name README.md ! -name qemu-boot.sh ! -name packages.lock \
            -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        echo "lock"
        cat "$lockfile"
    } | sha256sum | cut -c1-16
}

# Packages from packages.list, comma-separated for mmdebstrap --include.
include_list() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/packages.list" | grep -v '^$' | paste -sd,
}

# "name version arch" of every installed package in the root file system, sorted.
installed_packages() {
    dpkg-query --admindir="$1/var/lib/dpkg" -W -f='${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n' \
        | awk '$1 == "ii" { print $2, $3, $4 }' | LC_ALL=C sort
}

# Runs mmdebstrap into $1 (a directory). $2 is "pinned" (the versions in
# packages.lock) or "newest" (--update-lock).
run_mmdebstrap() {
    local rootfs=$1 mode=$2 work
    work=$(dirname "$rootfs")
    local hooks=(--setup-hook="$here/hooks/setup.sh" --essential-hook="$here/hooks/essential.sh"
        --customize-hook="$here/hooks/customize.sh")
    # Files the image doesn't need (docs, man pages, translations): smaller
    # image, faster build. Copyright files stay.
    local dpkgopts=()
    for o in path-exclude=/usr/share/man/* path-exclude=/usr/share/info/* \
        path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright \
        path-exclude=/usr/share/locale/* path-include=/usr/share/locale/locale.alias \
        path-exclude=/usr/share/lintian/*; do
        dpkgopts+=(--dpkgopt="$o")
    done
    log "mmdebstrap $suite/$arch ($mode versions) from $mirror: this takes a while (qemu-user runs the maintainer scripts)"
    # A private mount namespace: whatever mmdebstrap mounts in the chroot
    # (/proc, /sys, /dev) goes away with it, even if it is killed, so removing
    # the build directory never reaches into a mounted /dev or /sys.
    GODWIT_DEBIAN_DIR=$here GODWIT_WORK=$work GODWIT_LOCK=$lock GODWIT_MODE=$mode \
        nice -n 19 ionice -c3 unshare --mount --propagation private -- \
        mmdebstrap --mode=root --arch="$arch" --variant=minbase --components=main \
        --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Retries "3"' \
        "${dpkgopts[@]}" --include="$(include_list)" "${hooks[@]}" \
        "$suite" "$rootfs" "$mirror" \
        || die "mmdebstrap failed: see the messages above (a package that cannot be found or fetched, an unreachable mirror (GODWIT_DEBIAN_MIRROR picks another), a maintainer script failing under qemu-user)"
}

# The format of a kernel file (Debian's /boot/vmlinux-*). Prints "gzip" (a gzip-compressed
# Image), "image" (a raw RISC-V Image, EFI stub or not), "zboot" (an EFI
# zboot container) or "unknown".
kernel_format() {
    local f=$1
    if [ "$(od -An -tx1 -N2 "$f" | tr -d ' ')" = 1f8b ]; then
        echo gzip
    elif [ "$(od -An -c -j4 -N4 "$f" | tr -d ' ')" = zimg ]; then
        echo zboot
    elif [ "$(od -An -c -j$((0x30)) -N5 "$f" | tr -d ' ')" = RISCV ] \
        && [ "$(od -An -tx1 -j$((0x38)) -N4 "$f" | tr -d ' ')" = 52534305 ]; then
        echo image
    else
        echo unknown
    fi
}

# A raw RISC-V Image starts with the boot header: "RISCV\0\0\0" at 0x30 and
# "RSC\x05" at 0x38 (Documentation/arch/riscv/boot-image-header.rst).
check_image_header() {
    [ "$(kernel_format "$1")" = image ] || die "$1 is not a RISC-V Image (no RISCV/RSC\\x05 magic at 0x30/0x38)"
}

# Kernel, initrd and OpenSBI out of the finished disk image (debugfs reads
# the ext4 file without mounting it), next to it in $1. Prints the format of
# Debian's kernel file.
extract_boot_files() {
    local out=$1 kver=$2
    # Debian's riscv64 kernel is /boot/vmlinux-<release> (other architectures
    # and older releases: vmlinuz-<release>).
    local kfile
    for kfile in vmlinux vmlinuz ''; do
        [ -n "$kfile" ] || die "no /boot/vmlinux-$kver or /boot/vmlinuz-$kver in the image"
        [ -f "$out/rootfs/boot/$kfile-$kver" ] && break
    done
    local f
    for f in "boot/$kfile-$kver:$kfile" "boot/initrd.img-$kver:initrd.img" "boot/config-$kver:config" \
        "$opensbi_path:fw_dynamic.bin"; do
        debugfs -R "dump /${f%%:*} $out/${f#*:}" "$out/disk.img" 2>/dev/null
        cmp -s "$out/${f#*:}" "$out/rootfs/${f%%:*}" || die "could not read /${f%%:*} back from disk.img"
    done
    # Godwit's and QEMU 7.2's loaders take a raw Image: `Image` is one
    # whatever Debian ships (the same file when it is already raw).
    local fmt
    fmt=$(kernel_format "$out/$kfile")
    case $fmt in
    image) ln "$out/$kfile" "$out/Image" ;;
    gzip) zcat "$out/$kfile" >"$out/Image" ;;
    *) die "$kfile-$kver has an unexpected format ($fmt): $(file -b "$out/$kfile" 2>/dev/null || true)" ;;
    esac
    check_image_header "$out/Image"
    echo "$kfile: $fmt"
}

build() {
    local mode=$1 tmp=$2
    local start=$SECONDS
    rm -rf --one-file-system "$tmp"
    mkdir -p "$tmp"
    building=$tmp
    local rootfs=$tmp/rootfs
    run_mmdebstrap "$rootfs" "$mode"

    # What got installed must be exactly the lock (pinned), or becomes it (newest).
    installed_packages "$rootfs" >"$tmp/packages.lock"
    if [ "$mode" = pinned ] && ! cmp -s "$tmp/packages.lock" "$lock"; then
        log "the installed packages differ from packages.lock (< lock, > installed):"
        diff "$lock" "$tmp/packages.lock" | grep '^[<>]' | head -n 30 >&2 || true
        die "packages.lock does not match what apt installs (packages.list changed?): run guest/debian/build.sh --update-lock"
    fi
    local hash
    hash=$(image_hash "$tmp/packages.lock")

    # A fixed machine-id (mmdebstrap leaves it empty). Empty means "first
    # boot" to systemd, on every boot of a -snapshot disk: presets applied,
    # first-boot units run. Derived from the hash, so the same for one build.
    printf '%s\n' "$(printf 'godwit-debian %s' "$hash" | md5sum | cut -c1-32)" >"$rootfs/etc/machine-id"

    local kvers kver
    kvers=$(ls "$rootfs/lib/modules")
    [ "$(wc -w <<<"$kvers")" -eq 1 ] || die "expected one kernel in the image, found: $kvers"
    kver=$kvers
    [ -f "$rootfs/$opensbi_path" ] || die "no /$opensbi_path in the image (opensbi package changed?)"

    log "making the ext4 image ($disk_size, sparse)"
    truncate -s "$disk_size" "$tmp/disk.img"
    # The file system UUID comes from the hash too: same build, same UUID.
    local uuid
    uuid=$(printf 'godwit-debian-fs %s' "$hash" | md5sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
    nice -n 19 ionice -c3 mke2fs -q -F -t ext4 -L godwit-root -U "$uuid" -m 1 -d "$rootfs" "$tmp/disk.img" \
        || die "mke2fs failed"

    local fmt
    fmt=$(extract_boot_files "$tmp" "$kver")
    local sbi_version
    sbi_version=$(dpkg-query --admindir="$rootfs/var/lib/dpkg" -W -f='${Version}' opensbi)
    {
        echo "suite=$suite"
        echo "arch=$arch"
        echo "kernel_release=$kver"
        echo "kernel_file_format=$fmt"
        echo "opensbi_package=$sbi_version"
        echo "packages=$(wc -l <"$tmp/packages.lock")"
        echo "cmdline=root=/dev/vda rw console=ttyS0"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "build_seconds=$((SECONDS - start))"
    } >"$tmp/info"
    rm -rf --one-file-system "$rootfs" "$tmp"/{available,wanted,unknown,unlocked,missing}

    # Finished: the cache entry appears in one rename.
    local dir=$deb_cache/$hash
    if [ -d "$dir" ]; then
        log "an identical image is already cached: $dir"
        rm -rf --one-file-system "$tmp"
    else
        mv "$tmp" "$dir"
    fi
    building=
    log "built $dir in $((SECONDS - start)) s (kernel $kver, $fmt)"
    result_dir=$dir
}

# `default` is a real directory of symlinks, replaced as a whole.
update_default() {
    local dir=$1 def=$deb_cache/default
    rm -rf "$def.new" && mkdir -p "$def.new"
    local f
    for f in "$dir"/*; do
        ln -s "$f" "$def.new/${f##*/}"
    done
    rm -rf "$def.old"
    [ -e "$def" ] && mv "$def" "$def.old"
    mv "$def.new" "$def" && rm -rf "$def.old"
}

building=
result_dir=
cleanup() {
    # A build that did not finish leaves nothing behind.
    if [ -n "$building" ] && [ -e "$building" ]; then
        log "removing unfinished build $building"
        rm -rf --one-file-system "$building"
    fi
}

main() {
    local print=0 update=0
    while (($#)); do
        case "$1" in
        --print-paths) print=1 ;;
        --update-lock) update=1 ;;
        -h | --help) sed -n '14,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument $1 (usage: build.sh [--print-paths] [--update-lock])" ;;
        esac
        shift
    done
    ensure_packages
    mkdir -p "$deb_cache"
    # One build at a time per cache: parallel callers wait, then find it cached.
    exec 9>"$deb_cache/.lock"
    flock -n 9 || { log "waiting for another build (lock: $deb_cache/.lock)"; flock 9; }
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    if ((update)); then
        ensure_binfmt
        build newest "$deb_cache/update-lock.tmp"
        cp "$result_dir/packages.lock" "$lock.new" && mv "$lock.new" "$lock"
        log "wrote $lock ($(wc -l <"$lock") packages): review and commit it"
    else
        [ -f "$lock" ] || die "no $lock: run guest/debian/build.sh --update-lock once"
        local dir
        dir=$deb_cache/$(image_hash "$lock")
        if [ -f "$dir/disk.img" ] && [ -f "$dir/Image" ]; then
            log "cached: $dir"
            result_dir=$dir
        else
            ensure_binfmt
            build pinned "$dir.tmp"
            [ "$result_dir" = "$dir" ] || die "internal: built $result_dir, expected $dir"
        fi
    fi
    update_default "$result_dir"
    if ((print)); then
        printf 'kernel=%s\ninitrd=%s\ndisk=%s\nbios=%s\n' \
            "$result_dir/Image" "$result_dir/initrd.img" "$result_dir/disk.img" "$result_dir/fw_dynamic.bin"
    fi
    log "ready: $deb_cache/default/{Image,initrd.img,disk.img,fw_dynamic.bin}"
}

main "$@"
