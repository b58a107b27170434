#!/usr/bin/env bash
# Builds the Godwit guest: a Linux 6.1 riscv64 `Image` and an `initramfs.cpio.gz`
# holding our static init and workloads.
#
# Both are cached outside the checkout, keyed by a hash of their inputs:
#   $GODWIT_CACHE/guest/kernel-<hash>/Image        (kernel fragment, linux-source and gcc versions)
#   $GODWIT_CACHE/guest/initramfs-<hash>/initramfs.cpio.gz   (guest/src, gcc version)
# and `$GODWIT_CACHE/guest/default/` points at the current pair; `godwit` uses
# it when no --kernel/--initrd is given. A second run with the same inputs does no work.
#
# Usage: guest/build.sh [--print-paths]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${GODWIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/godwit}
guest_cache=$cache/guest
cross=riscv64-linux-gnu-
jobs=$(nproc)

log() { printf 'guest: %s\n' "$*" >&2; }

need_pkgs=(gcc-riscv64-linux-gnu libc6-dev-riscv64-cross linux-source-6.1 bc flex bison cpio libelf-dev libssl-dev make gcc)
ensure_packages() {
    local missing=()
    for p in "${need_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        if [ "$(id -u)" -ne 0 ]; then
            echo "guest: need root to install ${missing[*]} (or install them yourself)" >&2
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Version strings that change the output when the toolchain or sources change.
tool_versions() {
    dpkg-query -W -f='${Package} ${Version}\n' linux-source-6.1 gcc-riscv64-linux-gnu libc6-dev-riscv64-cross
    "${cross}gcc" --version | head -n 1
}

# Recipe versions: bump when the build steps below change in a way that changes the output.
KERNEL_RECIPE=2
INITRAMFS_RECIPE=1

kernel_hash() {
    { echo "kernel-recipe $KERNEL_RECIPE"; tool_versions; cat "$here/kernel.config"; } | sha256sum | cut -c1-16
}

initramfs_hash() {
    {
        echo "initramfs-recipe $INITRAMFS_RECIPE"
        tool_versions
        (cd "$here" && find src -type f | LC_ALL=C sort | xargs sha256sum)
        cat "$here/initramfs.list"
    } | sha256sum | cut -c1-16
}

build_kernel() {
    local out=$1
    local src=$guest_cache/linux-src
    local tarball=/usr/src/linux-source-6.1.tar.xz
    local stamp
    stamp=$(dpkg-query -W -f='${Version}' linux-source-6.1)
    if [ ! -f "$src/.godwit-source-$stamp" ]; then
        log "unpacking $tarball"
        rm -rf "$src" && mkdir -p "$src"
        tar -xJf "$tarball" -C "$src" --strip-components=1
        touch "$src/.godwit-source-$stamp"
    fi
    local obj=$out.tmp/obj
    rm -rf "$out.tmp" && mkdir -p "$obj"
    local mk=(make -s -C "$src" O="$obj" ARCH=riscv CROSS_COMPILE="$cross" KBUILD_BUILD_TIMESTAMP=1970-01-01 KBUILD_BUILD_USER=godwit KBUILD_BUILD_HOST=godwit)
    log "configuring kernel (allnoconfig + guest/kernel.config)"
    "${mk[@]}" allnoconfig >/dev/null
    (cd "$obj" && ARCH=riscv CROSS_COMPILE=$cross "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" .config "$here/kernel.config" >/dev/null)
    "${mk[@]}" olddefconfig >/dev/null
    # Every line of the fragment must survive olddefconfig, or the guest silently lacks a feature.
    local bad=0
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        grep -qxF "$line" "$obj/.config" || { log "kernel config lost: $line"; bad=1; }
    done <"$here/kernel.config"
    ((bad == 0)) || { echo "guest: kernel.config has options the kernel does not accept" >&2; exit 1; }
    log "building kernel Image with $jobs jobs (a few minutes the first time)"
    "${mk[@]}" -j"$jobs" Image
    cp "$obj/arch/riscv/boot/Image" "$out.tmp/Image"
    cp "$obj/.config" "$out.tmp/config"
    cp "$obj/usr/gen_init_cpio" "$out.tmp/gen_init_cpio" 2>/dev/null || gcc -O2 -o "$out.tmp/gen_init_cpio" "$src/usr/gen_init_cpio.c"
    rm -rf "$obj"
    mv "$out.tmp" "$out"
}

build_initramfs() {
    local out=$1 gen=$2
    rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin"
    local cflags=(-static -O2 -Wall -Wextra -Werror -march=rv64gc -mabi=lp64d)
    log "compiling guest init and workloads"
    "${cross}gcc" "${cflags[@]}" -o "$out.tmp/bin/init" "$here"/src/*.c
    "${cross}strip" "$out.tmp/bin/init"
    sed "s|@BIN@|$out.tmp/bin|g" "$here/initramfs.list" >"$out.tmp/list"
    "$gen" -t 0 "$out.tmp/list" | gzip -9 -n >"$out.tmp/initramfs.cpio.gz"
    rm -rf "$out.tmp/bin" "$out.tmp/list"
    mv "$out.tmp" "$out"
}

main() {
    ensure_packages
    mkdir -p "$guest_cache"
    # One build at a time per cache (tests boot several guests in parallel,
    # and each may call this script): the others wait, then find it cached.
    exec 9>"$guest_cache/.lock"
    flock 9
    local kdir idir
    kdir=$guest_cache/kernel-$(kernel_hash)
    idir=$guest_cache/initramfs-$(initramfs_hash)
    if [ -f "$kdir/Image" ]; then log "kernel cached: $kdir"; else build_kernel "$kdir"; fi
    if [ -f "$idir/initramfs.cpio.gz" ]; then log "initramfs cached: $idir"; else build_initramfs "$idir" "$kdir/gen_init_cpio"; fi
    # `default` is a real directory of two symlinks, replaced atomically.
    local def=$guest_cache/default
    rm -rf "$def.new" && mkdir -p "$def.new"
    ln -s "$kdir/Image" "$def.new/Image"
    ln -s "$idir/initramfs.cpio.gz" "$def.new/initramfs.cpio.gz"
    rm -rf "$def.old"; [ -e "$def" ] && mv "$def" "$def.old"
    mv "$def.new" "$def" && rm -rf "$def.old"
    if [ "${1:-}" = "--print-paths" ]; then
        printf 'kernel=%s\ninitrd=%s\n' "$kdir/Image" "$idir/initramfs.cpio.gz"
    fi
    log "ready: $def/Image $def/initramfs.cpio.gz"
}

main "$@"
