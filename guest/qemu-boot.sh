#!/usr/bin/env bash
# Boots the Godwit guest under QEMU (the reference VMM) and checks a workload.
#
# Usage: guest/qemu-boot.sh [--timeout S] [--mem SIZE] [--smp N] WORKLOAD [key=value ...]
#   guest/qemu-boot.sh memtouch wws_mb=32 duration_s=20
#   guest/qemu-boot.sh alloc-free alloc_mb=64 cycles=2 page_reporting.page_reporting_order=0
#
# Builds the guest (guest/build.sh, cached), boots it with QEMU's `virt`
# board, OpenSBI and a virtio-balloon with free page reporting, and prints
# the console. Every key=value word goes onto the kernel command line.
#
# Exit 0 when the guest printed GODWIT READY and no GODWIT ERROR/CORRUPT, and:
#   - if the run ends by itself (duration_s=N, or cycles=N for alloc-free):
#     GODWIT DONE with "bad":0 (QEMU exits when the guest powers off);
#   - otherwise: 3 heartbeats with "bad":0, then QEMU is stopped.
# Non-zero on anything else, or after --timeout seconds (default 120).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
timeout=120
mem=512M
smp=1

usage() { sed -n '4,5p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
    case "$1" in
    --timeout) timeout=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "qemu-boot: unknown option $1" >&2; usage ;;
    *) break ;;
    esac
done
(($# >= 1)) || usage
workload=$1
shift
params=("$@")

qemu=qemu-system-riscv64
command -v "$qemu" >/dev/null || {
    echo "qemu-boot: $qemu not found: apt-get install qemu-system-misc" >&2
    exit 1
}
# `-bios default` loads OpenSBI from QEMU's data directories; Debian ships it
# in qemu-system-data (not in the separate `opensbi` package).
firmware=opensbi-riscv64-generic-fw_dynamic.bin
found_fw=
while IFS= read -r dir; do
    [ -f "$dir/$firmware" ] && found_fw=$dir/$firmware && break
done < <("$qemu" -L help)
if [ -z "$found_fw" ]; then
    echo "qemu-boot: QEMU's RISC-V firmware $firmware is missing (looked in: $("$qemu" -L help | tr '\n' ' '))." >&2
    echo "qemu-boot: install it with: apt-get install qemu-system-data" >&2
    exit 1
fi

# Does the run end by itself (so we wait for DONE)?
expect_done=0
for p in "${params[@]}"; do
    case "$p" in
    duration_s=0 | cycles=0) ;;
    duration_s=* ) expect_done=1 ;;
    cycles=*) [ "$workload" = alloc-free ] && expect_done=1 ;;
    esac
done

paths=$("$here/build.sh" --print-paths)
kernel=$(sed -n 's/^kernel=//p' <<<"$paths")
initrd=$(sed -n 's/^initrd=//p' <<<"$paths")
[ -f "$kernel" ] && [ -f "$initrd" ] || { echo "qemu-boot: build.sh gave no kernel/initrd" >&2; exit 1; }

append="console=ttyS0 earlycon=sbi godwit.workload=$workload ${params[*]}"
log=$(mktemp /tmp/godwit-qemu-boot.XXXXXX)
qpid=
tpid=
cleanup() {
    set +e # a failing kill/wait here must not skip the rest
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; fi
    if [ -n "$tpid" ]; then kill "$tpid" 2>/dev/null; wait "$tpid" 2>/dev/null; fi
    rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "qemu-boot: $qemu -m $mem -smp $smp, append: $append" >&2
"$qemu" -M virt -m "$mem" -smp "$smp" -nographic -bios default \
    -kernel "$kernel" -initrd "$initrd" -append "$append" \
    -device virtio-balloon-device,free-page-reporting=on \
    -no-reboot </dev/null >"$log" 2>&1 &
qpid=$!
tail -n +1 -f --pid="$qpid" "$log" &
tpid=$!

fail() {
    sleep 0.3 # let tail print the last lines
    echo "qemu-boot: FAIL: $*" >&2
    exit 1
}

deadline=$((SECONDS + timeout))
result=
while :; do
    if grep -aqE 'GODWIT (ERROR|CORRUPT)|Kernel panic' "$log"; then
        result=error
        break
    fi
    if ((expect_done)); then
        grep -aq 'GODWIT DONE' "$log" && { result=done; break; }
    elif (($(grep -ac 'GODWIT HB' "$log") >= 3)); then
        result=running
        break
    fi
    kill -0 "$qpid" 2>/dev/null || { result=exited; break; }
    ((SECONDS < deadline)) || { result=timeout; break; }
    sleep 0.2
done

# After DONE or ERROR the guest powers off by itself: give QEMU a moment to exit.
if [ "$result" = done ] || [ "$result" = error ]; then
    for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
fi
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true
qpid=
wait "$tpid" 2>/dev/null || true
tpid=

case $result in
error) fail "the guest reported: $(grep -aE 'GODWIT (ERROR|CORRUPT)|Kernel panic' "$log" | head -n 1 | tr -d '\r')" ;;
timeout) fail "timed out after ${timeout}s" ;;
exited) fail "QEMU exited before the workload finished" ;;
esac
grep -aq 'GODWIT READY' "$log" || fail "no GODWIT READY"
if grep -a 'GODWIT \(HB\|DONE\)' "$log" | grep -avq '"bad":0,'; then
    fail "a heartbeat reported bad > 0: $(grep -a 'GODWIT \(HB\|DONE\)' "$log" | grep -av '"bad":0,' | head -n 1 | tr -d '\r')"
fi
last=$(grep -a 'GODWIT \(HB\|DONE\)' "$log" | tail -n 1 | tr -d '\r')
echo "qemu-boot: OK ($result): $last" >&2
