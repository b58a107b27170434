#!/usr/bin/env bash
# Boots the Godwit Debian guest under QEMU (the reference VMM) and waits for
# its boot-complete marker on the serial console:
#   GODWIT DEBIAN READY {"cpus":N,"mem_kb":M,"kernel":"..."}
#
# Usage: guest/debian/qemu-boot.sh [--timeout S] [--mem SIZE] [--smp N] [--exec CMD] [KERNEL_ARG ...]
#   guest/debian/qemu-boot.sh                      # boot, wait for READY, stop QEMU
#   guest/debian/qemu-boot.sh --exec 'systemctl --failed --no-legend | wc -l'
#   guest/debian/qemu-boot.sh godwit.ip=dhcp       # extra words go onto the kernel command line
#
# Builds the image first (guest/debian/build.sh, cached), then runs
#   qemu-system-riscv64 -M virt -m 512M -smp 2 -nographic -bios fw_dynamic.bin
#     -kernel Image -initrd initrd.img -append "root=/dev/vda rw console=ttyS0 ..."
#     -drive file=disk.img,format=raw,if=none,id=hd0 -device virtio-blk-device,drive=hd0
#     -netdev user,id=n0 -device virtio-net-device,netdev=n0 -snapshot
# (-snapshot: the guest's writes go to a temporary overlay, the cached image
# stays pristine) and prints the console. --exec CMD types CMD at the root
# shell on ttyS0 once the guest is up, waits for it and prints its exit status.
#
# Exit 0 only when the marker arrived with valid JSON (and, with --exec, CMD
# exited 0); non-zero on a kernel panic, QEMU exiting, or after --timeout
# seconds (default 300). QEMU is killed whenever the script exits.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
timeout=300
mem=512M
smp=2
exec_cmd=

usage() { sed -n '6,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
    case "$1" in
    --timeout) timeout=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --exec) exec_cmd=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "qemu-boot: unknown option $1" >&2; usage ;;
    *) break ;;
    esac
done
extra=("$@")

qemu="qemu-system-riscv64"
command -v "$qemu" >/dev/null || {
    echo "qemu-boot: $qemu not found: apt-get install qemu-system-misc" >&2
    exit 1
}

paths=$("$here/build.sh" --print-paths)
get() { sed -n "s/^$1=//p" <<<"$paths"; }
kernel=$(get kernel) initrd=$(get initrd) disk=$(get disk) bios=$(get bios)
for f in "$kernel" "$initrd" "$disk" "$bios"; do
    [ -f "$f" ] || { echo "qemu-boot: build.sh gave no file $f" >&2; exit 1; }
done

append="root=/dev/vda rw console=ttyS0 ${extra[*]}"
work=$(mktemp -d /tmp/godwit-debian-boot.XXXXXX)
log=$work/console
qpid=
tpid=
cleanup() {
    set +e # a failing kill/wait here must not skip the rest
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; fi
    if [ -n "$tpid" ]; then kill "$tpid" 2>/dev/null; wait "$tpid" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# QEMU's stdin is the serial console's input: a FIFO we hold open for
# writing, so --exec can type into the guest's shell (and QEMU never sees EOF).
mkfifo "$work/input"
exec 8<>"$work/input"

: >"$log" # exists before tail and grep look at it
echo "qemu-boot: $qemu -m $mem -smp $smp, append: $append" >&2
start=$(date +%s.%N)
"$qemu" -M virt -m "$mem" -smp "$smp" -nographic -bios "$bios" \
    -kernel "$kernel" -initrd "$initrd" -append "$append" \
    -drive file="$disk",format=raw,if=none,id=hd0 -device virtio-blk-device,drive=hd0 \
    -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
    -snapshot -no-reboot <&8 >"$log" 2>&1 &
qpid=$!
tail -n +1 -f --pid="$qpid" "$log" &
tpid=$!

fail() {
    sleep 0.3 # let tail print the last lines
    echo "qemu-boot: FAIL: $*" >&2
    exit 1
}
elapsed() { echo "$(date +%s.%N) $start" | awk '{ printf "%.1f", $1 - $2 }'; }

# Waits until the console has a line matching the extended regex $1; fails
# on a panic, on QEMU exiting, or at the deadline.
deadline=$((SECONDS + timeout))
wait_for() {
    while ! grep -aqE "$1" "$log"; do
        grep -aq 'Kernel panic' "$log" && fail "kernel panic: $(grep -a 'Kernel panic' "$log" | head -n 1 | tr -d '\r')"
        kill -0 "$qpid" 2>/dev/null || fail "QEMU exited before: $2"
        ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for: $2"
        sleep 0.1
    done
}

wait_for '^GODWIT DEBIAN READY \{' "the GODWIT DEBIAN READY marker"
boot_s=$(elapsed)
json=$(grep -a '^GODWIT DEBIAN READY {' "$log" | head -n 1 | tr -d '\r' | sed 's/^GODWIT DEBIAN READY //')
if command -v jq >/dev/null; then
    jq -e '(.cpus|type=="number") and (.mem_kb|type=="number") and (.kernel|type=="string")' <<<"$json" >/dev/null \
        || fail "the marker's JSON is not valid: $json"
elif command -v python3 >/dev/null; then
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert {"cpus","mem_kb","kernel"} <= d.keys()' "$json" \
        || fail "the marker's JSON is not valid: $json"
fi

status=0
if [ -n "$exec_cmd" ]; then
    # The autologin shell's prompt, then the command; its end is a line we
    # can find (the echoed input has the text split by quotes, so it does not match).
    wait_for 'root@[^ ]*:.*# ' "the root shell prompt on ttyS0"
    printf '%s; echo "GODWIT-EXEC""-DONE rc=$?"\n' "$exec_cmd" >&8
    wait_for '^GODWIT-EXEC-DONE rc=' "the end of --exec"
    status=$(grep -a '^GODWIT-EXEC-DONE rc=' "$log" | head -n 1 | tr -d '\r' | sed 's/.*rc=//')
fi

kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true
qpid=
wait "$tpid" 2>/dev/null || true
tpid=
echo >&2
echo "qemu-boot: OK: GODWIT DEBIAN READY after ${boot_s} s (wall, QEMU start to marker): $json" >&2
if [ -n "$exec_cmd" ]; then
    echo "qemu-boot: --exec exited $status" >&2
    [ "$status" = 0 ] || exit 1
fi
