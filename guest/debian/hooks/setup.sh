#!/bin/sh
# mmdebstrap --setup-hook (runs on the host, before any package is
# downloaded). Fails at once, naming them, if packages.list has packages the
# mirror does not; with GODWIT_MODE=pinned also if packages.list and
# packages.lock disagree or the mirror no longer has some locked versions,
# and then pins every package to its version in packages.lock.
# $1 is the chroot directory; GODWIT_* come from build.sh.
set -eu
root=$1
src=${GODWIT_DEBIAN_DIR:?}
work=${GODWIT_WORK:?}
mode=${GODWIT_MODE:?}
lock=${GODWIT_LOCK:?}
# Use mmdebstrap's own apt configuration (the chroot's sources and lists).
APT_CONFIG=${MMDEBSTRAP_APT_CONFIG:?}
export APT_CONFIG

fix="Fix: guest/debian/build.sh --update-lock, then commit guest/debian/packages.lock."

apt-get update -qq -o APT::Update::Error-Mode=any
# "name version arch" of every package version the mirror offers.
apt-cache dumpavail \
    | awk '/^Package:/ { p = $2 } /^Version:/ { v = $2 } /^Architecture:/ { a = $2 }
           /^$/ { if (p != "") print p, v, a; p = "" }' \
    | LC_ALL=C sort -u >"$work/available"

sed -e 's/#.*//' -e 's/[[:space:]]//g' "$src/packages.list" | grep -v '^$' | LC_ALL=C sort -u >"$work/wanted"
cut -d' ' -f1 "$work/available" | LC_ALL=C sort -u | LC_ALL=C comm -23 "$work/wanted" - >"$work/unknown"
if [ -s "$work/unknown" ]; then
    echo "debian: packages.list names packages that the mirror does not have for riscv64: $(tr '\n' ' ' <"$work/unknown")" >&2
    exit 1
fi

[ "$mode" = pinned ] || exit 0

# A package added to packages.list since the lock was made would only show
# up after the whole build, as a difference from the lock: say so now.
cut -d' ' -f1 "$lock" | LC_ALL=C comm -23 "$work/wanted" - >"$work/unlocked"
if [ -s "$work/unlocked" ]; then
    echo "debian: packages.list has packages that packages.lock lacks: $(tr '\n' ' ' <"$work/unlocked")" >&2
    echo "debian: $fix" >&2
    exit 1
fi

LC_ALL=C comm -23 "$lock" "$work/available" >"$work/missing"
if [ -s "$work/missing" ]; then
    n=$(wc -l <"$work/missing")
    {
        echo "debian: $n package version(s) in packages.lock are no longer on the mirror:"
        head -n 20 "$work/missing" | sed 's/^/debian:   /'
        [ "$n" -le 20 ] || echo "debian:   ..."
        echo "debian: Debian's mirror keeps only the newest version of each package (a point"
        echo "debian: release replaces them). $fix"
    } >&2
    exit 1
fi

# Pin-Priority 1001 makes apt take exactly these versions, for the
# Essential set mmdebstrap installs first as well as for everything else.
# customize.sh removes the file again, so the finished image has no pins.
awk '{ printf "Package: %s\nPin: version %s\nPin-Priority: 1001\n\n", $1, $2 }' "$lock" \
    >"$root/etc/apt/preferences.d/godwit-lock"
