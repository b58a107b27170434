#!/usr/bin/env bash
# Installs the Debian 12 packages Godwit needs (as root; skips what is there).
set -euo pipefail
pkgs=(
    gcc-riscv64-linux-gnu libc6-dev-riscv64-cross linux-source-6.1  # the guest
    bc flex bison cpio libelf-dev libssl-dev make gcc               # kernel build
    qemu-system-misc qemu-system-data                               # the reference VMM
    iproute2                                                        # test hosts and tc
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
