#!/usr/bin/env bash
# Installs what Godwit's build, tests and benchmarks need on Debian 12 (as
# root; skips what is there): Debian packages, and QEMU's QMP client library
# (qemu.qmp, from PyPI) in a virtualenv in the cache for the QMP
# compatibility test.
set -euo pipefail
pkgs=(
    gcc-riscv64-linux-gnu libc6-dev-riscv64-cross linux-source-6.1  # the guest
    bc flex bison cpio libelf-dev libssl-dev make gcc               # kernel build
    qemu-system-misc qemu-system-data                               # the reference VMM
    iproute2                                                        # test hosts and tc
    iputils-ping iputils-arping                                     # netload's ping, moving a guest
    python3 python3-venv                                            # the QMP client test
    wrk redis-tools iperf3 curl e2fsprogs                           # bench --preset apps: the load, the build's sources
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# qemu.qmp, pinned, in its own virtualenv (the system Python stays as it is).
cache=${GODWIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/godwit}
venv=$cache/qmp-venv
QEMU_QMP=qemu.qmp==0.0.6
if ! "$venv/bin/python3" -c 'import qemu.qmp' 2>/dev/null; then
    echo "install-deps: installing $QEMU_QMP into $venv" >&2
    mkdir -p "$cache"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$QEMU_QMP"
fi
