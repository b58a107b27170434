#!/usr/bin/env python3
"""Measures post-copy failover on loopback: how long after the destination
dies (SIGKILL) the VM runs again at the source, and from which checkpoint.

    scripts/failover-recovery.py [--runs 5] [--kill-after 1.5] [--timeout-ms 1000]

Each run boots memtouch (256 MiB, 32 MiB WWS, 2000 pages/s) with `godwit run`,
starts `godwit receive`, migrates in post-copy at 4 MB/s with
--failover-timeout, kills the destination --kill-after seconds after its
first heartbeat, and prints per run: the time from the kill to the first
heartbeat at the source, the engine's failover_ms (from the destination's
last word), the checkpoint resumed from, the bytes sent back, the last
heartbeat the destination printed and the first the source printed after
(the guest goes on from the checkpoint), and the guest's own check (bad).
Prints the runs as JSON at the end. Every process and file is removed.
"""
import argparse, json, os, shutil, signal, socket, subprocess, tempfile, threading, time

G = os.environ.get("GODWIT", "target/release/godwit")


def lines_of(p, out):
    for line in p.stdout:
        out.append((time.monotonic(), line.decode(errors="replace").rstrip()))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_line(lines, prefix, after=0.0, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for t, l in list(lines):
            if t > after and l.startswith(prefix):
                return t, l
        time.sleep(0.01)
    raise SystemExit(f"no line starting with {prefix!r} within {timeout} s")


def beat(line):
    return json.loads(line.split(" ", 2)[2])


def spawn(args, lines):
    p = subprocess.Popen([G] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    threading.Thread(target=lines_of, args=(p, lines), daemon=True).start()
    return p


def one(d, kill_after, timeout_ms):
    ss, ds, report = f"{d}/s.sock", f"{d}/d.sock", f"{d}/r.json"
    procs = []
    try:
        sl, dl = [], []
        src = spawn(["run", "--mem", "256M", "--control", ss, "--workload", "memtouch",
                     "--append", "wws_mb=32 pages_per_s=2000"], sl)
        procs.append(src)
        wait_line(sl, "GODWIT READY")
        time.sleep(0.5)
        port = free_port()
        dst = spawn(["receive", "--listen", f"127.0.0.1:{port}", "--control", ds,
                     "--tls-plain"], dl)
        procs.append(dst)
        time.sleep(0.3)
        mig = subprocess.Popen([G, "migrate", "--control", ss, "--to", f"127.0.0.1:{port}",
                                "--tls-plain", "--mode", "postcopy", "--max-bandwidth", "4000000",
                                "--failover-timeout", str(timeout_ms), "--json", report,
                                "--keep-source"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(mig)
        wait_line(dl, "GODWIT HB")
        time.sleep(kill_after)
        dst.send_signal(signal.SIGKILL)
        t_kill = time.monotonic()
        dst.wait()
        time.sleep(0.3)
        last_dst = max(beat(l)["seq"] for _, l in dl if l.startswith("GODWIT HB"))
        mig.wait(timeout=60)
        t_back, l = wait_line(sl, "GODWIT HB", after=t_kill)
        time.sleep(1.0)
        bad = max(beat(l)["bad"] for t, l in sl if t > t_kill and l.startswith("GODWIT HB"))
        f = json.load(open(report))["failover"]
        subprocess.run([G, "ctl", ss, "quit"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        src.wait(timeout=30)
        return dict(kill_to_first_beat_ms=round((t_back - t_kill) * 1e3, 1),
                    failover_ms=round(f["failover_ms"], 1),
                    from_checkpoint=f["resumed_from_checkpoint"], checkpoints=f["checkpoints"],
                    mb_back=round(f["checkpoint_bytes"] / 1e6, 1),
                    dst_last_beat=last_dst, src_first_beat=beat(l)["seq"], bad=bad)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--runs", type=int, default=5)
    a.add_argument("--kill-after", type=float, default=1.5)
    a.add_argument("--timeout-ms", type=int, default=1000)
    args = a.parse_args()
    top = tempfile.mkdtemp(prefix="godwit-failover-")
    rows = []
    try:
        for i in range(args.runs):
            d = os.path.join(top, str(i))
            os.makedirs(d)
            row = one(d, args.kill_after, args.timeout_ms)
            print(row, flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    print(json.dumps({"timeout_ms": args.timeout_ms, "kill_after_s": args.kill_after,
                      "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
