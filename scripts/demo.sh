#!/usr/bin/env bash
# The main job: builds what is missing (packages, guest image, Godwit).
# As root: brings up the testbed (two hosts joined by a 1 Gbit/s shaped
# link, a switch, a client), boots a 512 MiB, 2-vCPU guest serving TCP
# requests (netserve) on a virtio-net NIC in one host, loads it from the
# client (four connections, every answer checked), migrates it live with
# post-copy and dual-direction bubbling over mutual TLS to the other host,
# and prints the report, what the guest saw and the downtime the client
# saw. Not root: a memtouch guest (a 64 MiB working set that checks its own
# memory) migrated on loopback. Then the quick benchmark beside QEMU.
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

if [ "$(id -u)" = 0 ]; then
    # Two hosts (network namespaces) joined by a 1 Gbit/s shaped link, a
    # switch for the VM network, and a client on it.
    "$G" testbed up --rate 1gbit
    trap 'cleanup; "$G" testbed down >/dev/null 2>&1 || true' EXIT
    ip="ip=10.77.1.10::10.77.1.1:255.255.255.0::eth0:off"
    echo "== host godwit-src: godwit run --mem 512M --cpus 2 --net tap=gwtap0 --workload netserve"
    ip netns exec godwit-src "$G" run --mem 512M --cpus 2 --net tap=gwtap0 --workload netserve \
        --append "$ip" --control "$dir/src.sock" </dev/null >"$dir/src.console" 2>"$dir/src.log" &
    src_pid=$!
    echo "== host godwit-dst: godwit receive --listen 10.77.0.2:$port --net tap=gwtap0"
    ip netns exec godwit-dst "$G" receive --listen "10.77.0.2:$port" --net tap=gwtap0 \
        --control "$dir/dst.sock" --tls-dir "$dir/tls-dst" \
        </dev/null >"$dir/dst.console" 2>"$dir/dst.log" &
    dst_pid=$!
    to=10.77.0.2:$port
    wait_line "$dir/src.console" "GODWIT READY" 120
    grep -m1 "GODWIT READY" "$dir/src.console"
    echo "== client godwit-client: godwit netload --to 10.77.1.10 (4 TCP connections, a request every 1 ms on each, every answer checked)"
    ip netns exec godwit-client "$G" netload --to 10.77.1.10 --duration-s 10 \
        --json "$dir/client.json" >/dev/null 2>"$dir/client.log" &
    load_pid=$!
    sleep 4
    wrap=(ip netns exec godwit-src)
else
    echo "== not root: no testbed (network namespaces need root); a guest without a network, on loopback"
    echo "== source: godwit run --mem 512M --workload memtouch (wws 64 MiB)"
    "$G" run --mem 512M --workload memtouch --append "wws_mb=64 pages_per_s=0" \
        --control "$dir/src.sock" </dev/null >"$dir/src.console" 2>"$dir/src.log" &
    src_pid=$!
    echo "== destination: godwit receive --listen 127.0.0.1:$port"
    "$G" receive --listen "127.0.0.1:$port" --control "$dir/dst.sock" --tls-dir "$dir/tls-dst" \
        </dev/null >"$dir/dst.console" 2>"$dir/dst.log" &
    dst_pid=$!
    to=127.0.0.1:$port
    wait_line "$dir/src.console" "GODWIT READY" 120
    grep -m1 "GODWIT READY" "$dir/src.console"
    sleep 4 # let the guest settle and report its free memory
    tail -1 "$dir/src.console"
    load_pid=
    wrap=()
fi

echo "== godwit migrate --mode postcopy --prepaging dual (over mutual TLS, to $to)"
"${wrap[@]}" "$G" migrate --control "$dir/src.sock" --to "$to" --tls-dir "$dir/tls-src" \
    --mode postcopy --prepaging dual --json "$dir/report.json"
wait "$src_pid"; src_pid=
echo "== the source VMM has exited; the guest runs on at the destination:"
sleep 3
grep "GODWIT HB" "$dir/dst.console" | tail -3
if [ -n "$load_pid" ]; then
    wait "$load_pid" || { cat "$dir/client.log"; echo "netload: FAILED"; exit 1; }
    echo "== what the client saw"
    cat "$dir/client.log"
fi
"$G" ctl "$dir/dst.sock" quit >/dev/null
wait "$dst_pid" || true; dst_pid=

echo
echo "== report (JSON)"
cat "$dir/report.json"
echo
bad=$(grep "GODWIT HB" "$dir/src.console" "$dir/dst.console" | grep -vc '"bad":0,' || true)
if [ "$bad" != 0 ]; then
    echo "guest: INTEGRITY ERRORS in $bad heartbeats"; exit 1
fi
echo "guest: no integrity errors before, during or after the migration"
if [ -n "$load_pid" ]; then
    python3 - "$dir/client.json" "$dir/report.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
lost = c["answers_lost"] + c["answers_wrong"] + c["conn_failures"]
print(f"client: {c['answers_ok']} answers, {c['answers_lost']} lost, {c['answers_wrong']} wrong, "
      f"{c['conn_failures']} connections failed: it kept its connections through the migration")
print(f"downtime: client-observed {c['downtime_ms']:.1f} ms, guest-observed "
      f"{r['guest_downtime_console_ms']:.1f} ms, VMMs {r['downtime_ms']:.1f} ms; "
      f"{r['frames_forwarded']} frames that reached the source after the pause were handed over")
sys.exit(1 if lost else 0)
PY
fi

echo
echo "== every mode and strategy on the same guest and a 1 Gbit/s link, next to QEMU (godwit bench --preset quick)"
"$G" bench --preset quick --out "$dir/bench"
cat "$dir/bench/results.md"
