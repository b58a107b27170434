#!/usr/bin/env bash
# The main job: builds what is missing (packages, guest image, Godwit),
# boots a 512 MiB guest running memtouch (a 64 MiB working set that checks
# its own memory) in one `godwit` process, migrates it live with post-copy
# and dual-direction bubbling to a second `godwit` process over TCP on
# loopback (mutual TLS), and prints the migration report and what the
# guest saw.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
guest/build.sh
cargo build --release -q
G=$PWD/target/release/godwit
dir=$(mktemp -d /tmp/godwit-demo.XXXXXX)
src_pid=; dst_pid=
cleanup() {
    for p in $src_pid $dst_pid; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
port=$((40000 + RANDOM % 20000))
# Migration is authenticated and encrypted (mutual TLS): one CA, an
# identity for each side.
"$G" tls-gen "$dir/tls-src" >/dev/null
"$G" tls-gen "$dir/tls-dst" --ca "$dir/tls-src" >/dev/null

wait_line() { # file pattern seconds
    for _ in $(seq 1 $(($3 * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1"; tail -20 "$1"; return 1
}

echo "== source: godwit run --mem 512M --workload memtouch (wws 64 MiB)"
"$G" run --mem 512M --workload memtouch --append "wws_mb=64 pages_per_s=0" \
    --control "$dir/src.sock" </dev/null >"$dir/src.console" 2>"$dir/src.log" &
src_pid=$!
echo "== destination: godwit receive --listen 127.0.0.1:$port"
"$G" receive --listen "127.0.0.1:$port" --control "$dir/dst.sock" --tls-dir "$dir/tls-dst" \
    </dev/null >"$dir/dst.console" 2>"$dir/dst.log" &
dst_pid=$!
wait_line "$dir/src.console" "GODWIT READY" 120
grep -m1 "GODWIT READY" "$dir/src.console"
sleep 4 # let the guest settle and report its free memory
tail -1 "$dir/src.console"

echo "== godwit migrate --mode postcopy --prepaging dual (over TLS)"
"$G" migrate --control "$dir/src.sock" --to "127.0.0.1:$port" --tls-dir "$dir/tls-src" \
    --mode postcopy --prepaging dual --json "$dir/report.json"
wait "$src_pid"; src_pid=
echo "== the source VMM has exited; the guest runs on at the destination:"
sleep 3
grep "GODWIT HB" "$dir/dst.console" | tail -3
"$G" ctl "$dir/dst.sock" quit >/dev/null
wait "$dst_pid" || true; dst_pid=

echo
echo "== report (JSON)"
cat "$dir/report.json"
bad=$(grep "GODWIT HB" "$dir/src.console" "$dir/dst.console" | grep -vc '"bad":0,' || true)
if [ "$bad" != 0 ]; then
    echo "memtouch: INTEGRITY ERRORS in $bad heartbeats"; exit 1
fi
echo "memtouch: no integrity errors before, during or after the migration"

echo
echo "== every mode and strategy on the same guest and a 1 Gbit/s link, next to QEMU (godwit bench --preset quick)"
"$G" bench --preset quick --out "$dir/bench"
cat "$dir/bench/results.md"
