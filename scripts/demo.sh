#!/usr/bin/env bash
# The main job: builds the guest image and Godwit, boots the guest in Godwit
# with the memtouch workload (a 64 MiB working set that verifies itself) for
# 10 seconds, and prints the console and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
guest/build.sh
cargo build --release -q
log=$(mktemp)
trap 'rm -f "$log"' EXIT
./target/release/godwit run --workload memtouch --append "wws_mb=64 duration_s=10" </dev/null | tee "$log"
echo
echo "== summary"
grep -m1 '^GODWIT READY' "$log" || { echo "the guest never became ready"; exit 1; }
done_line=$(grep -m1 '^GODWIT DONE' "$log") || { echo "the workload did not finish"; exit 1; }
echo "$done_line"
case "$done_line" in
*'"bad":0,'*) echo "memtouch: no integrity errors" ;;
*) echo "memtouch: INTEGRITY ERRORS"; exit 1 ;;
esac
