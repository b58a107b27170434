#!/usr/bin/env bash
# Guest network throughput and latency through virtio-net, Godwit next to
# QEMU, on the testbed's VM network (root). Both boot the same kernel,
# initramfs and command line (netserve, 10.77.1.10), the same RAM and vCPUs,
# with a virtio-net NIC on the same TAP (gwtap0 in godwit-src; QEMU:
# -netdev tap,vhost=off + virtio-net-device). The client in godwit-client
# (`godwit netload`) measures, in turn: a bulk TCP stream into the guest
# (in), one out of it (out), and four request/response connections (a
# request every millisecond on each). Runs alternate between the VMMs.
#
#   scripts/bench-net.sh [--runs N] [--secs S] [--cpus N] [--mem SIZE] [--out DIR]
#
# Prints a table (mean ± sd over the runs, and the Godwit/QEMU ratio) and
# writes DIR/bench-net.json with every run.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 secs=5 cpus=2 mem=512M out=bench-net-out
while (($#)); do
    case "$1" in
    --runs) runs=${2:?}; shift 2 ;;
    --secs) secs=${2:?}; shift 2 ;;
    --cpus) cpus=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    *) echo "bench-net: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench-net: needs root (the testbed's network namespaces)" >&2; exit 1; }
G=$PWD/target/release/godwit
[ -x "$G" ] || cargo build --release -q
paths=$(guest/build.sh --print-paths)
kernel=$(sed -n 's/^kernel=//p' <<<"$paths")
initrd=$(sed -n 's/^initrd=//p' <<<"$paths")
qemu=qemu-system-riscv64
command -v $qemu >/dev/null || { echo "bench-net: $qemu not found (apt-get install qemu-system-misc)" >&2; exit 1; }
mkdir -p "$out"
dir=$(mktemp -d /tmp/godwit-bench-net.XXXXXX)
vm_pid=
cleanup() {
    [ -n "$vm_pid" ] && { kill "$vm_pid" 2>/dev/null; wait "$vm_pid" 2>/dev/null; }
    "$G" testbed down >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$G" testbed up --rate 1gbit >/dev/null
ip="ip=10.77.1.10::10.77.1.1:255.255.255.0::eth0:off"
# The command line Godwit gives the guest (crates/vmm/src/guest.rs: its
# base words, the workload, ours).
append="console=ttyS0 earlycon page_reporting.page_reporting_order=0 godwit.workload=netserve $ip"

boot() { # vmm
    local log=$dir/console
    : >"$log"
    if [ "$1" = godwit ]; then
        ip netns exec godwit-src "$G" run --mem "$mem" --cpus "$cpus" --net tap=gwtap0 \
            --kernel "$kernel" --initrd "$initrd" --workload netserve --append "$ip" \
            </dev/null >"$log" 2>&1 &
    else
        ip netns exec godwit-src $qemu -M virt -accel tcg -bios default -smp "$cpus" -m "$mem" \
            -kernel "$kernel" -initrd "$initrd" -append "$append" \
            -netdev tap,id=net0,ifname=gwtap0,script=no,downscript=no,vhost=off \
            -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56 \
            -display none -serial stdio -monitor none -no-reboot </dev/null >"$log" 2>&1 &
    fi
    vm_pid=$!
    for _ in $(seq 1 1200); do
        grep -q "GODWIT READY" "$log" && { sleep 1; return 0; }
        kill -0 "$vm_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench-net: $1 did not print GODWIT READY:" >&2; tail -20 "$log" >&2; exit 1
}

load() { # name args...
    local name=$1; shift
    ip netns exec godwit-client timeout $((secs + 30)) "$G" netload --to 10.77.1.10 \
        --duration-s "$secs" "$@" >"$dir/$name.json" 2>"$dir/$name.log" ||
        { echo "bench-net: netload $name failed:" >&2; cat "$dir/$name.log" >&2; exit 1; }
}

: >"$dir/runs.jsonl"
for run in $(seq 1 "$runs"); do
    for vmm in godwit qemu; do
        echo "bench-net: run $run/$runs: $vmm" >&2
        boot $vmm
        load in --stream in --conns 1 --period-ms 100
        load out --stream out --conns 1 --period-ms 100
        load rr --conns 4 --period-ms 1
        kill "$vm_pid"; wait "$vm_pid" 2>/dev/null || true; vm_pid=
        python3 - "$dir" "$vmm" "$run" >>"$dir/runs.jsonl" <<'PY'
import json, sys
d, vmm, run = sys.argv[1], sys.argv[2], int(sys.argv[3])
j = lambda n: json.load(open(f"{d}/{n}.json"))
i, o, r = j("in"), j("out"), j("rr")
for x in (i, o, r):
    bad = x["answers_lost"] + x["answers_wrong"] + x["conn_failures"]
    assert bad == 0 and not (x.get("stream") or {}).get("error"), f"{vmm}: client errors: {x}"
mbit = lambda s: s["stream"]["mean_bytes_per_s"] * 8 / 1e6
print(json.dumps({"vmm": vmm, "run": run, "in_mbit_s": mbit(i), "out_mbit_s": mbit(o),
                  "rr_p50_ms": r["rtt_ms"]["p50"], "rr_p99_ms": r["rtt_ms"]["p99"],
                  "rr_answers": r["answers_ok"]}))
PY
    done
done
python3 - "$dir/runs.jsonl" "$out/bench-net.json" "$cpus" "$mem" "$secs" <<'PY'
import json, statistics as st, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = [("in_mbit_s", "stream into the guest, Mbit/s", True), ("out_mbit_s", "stream out of the guest, Mbit/s", True),
        ("rr_p50_ms", "request/response p50, ms", False), ("rr_p99_ms", "request/response p99, ms", False)]
def ms(v):
    return (st.mean(v), st.stdev(v) if len(v) > 1 else 0.0)
summary = {}
print(f"\n# virtio-net on the testbed's VM network: {sys.argv[3]} vCPU(s), {sys.argv[4]}, {sys.argv[5]} s per measurement, "
      f"{len(runs)//2} run(s) per VMM (mean ± sd)\n")
print("| figure | Godwit | QEMU | Godwit / QEMU |\n| --- | --: | --: | --: |")
for k, label, higher in keys:
    g = ms([r[k] for r in runs if r["vmm"] == "godwit"])
    q = ms([r[k] for r in runs if r["vmm"] == "qemu"])
    ratio = g[0] / q[0] if q[0] else float("nan")
    summary[k] = {"godwit_mean": g[0], "godwit_sd": g[1], "qemu_mean": q[0], "qemu_sd": q[1], "ratio": ratio}
    print(f"| {label} | {g[0]:.2f} ± {g[1]:.2f} | {q[0]:.2f} ± {q[1]:.2f} | {ratio:.2f}× |")
json.dump({"cpus": int(sys.argv[3]), "mem": sys.argv[4], "secs": int(sys.argv[5]), "runs": runs, "summary": summary},
          open(sys.argv[2], "w"), indent=1)
print(f"\nJSON: {sys.argv[2]}")
PY
