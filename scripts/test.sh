#!/usr/bin/env bash
# The test command: installs what is missing, builds the guest images
# (cached), checks formatting and lints, and runs every test in release mode
# (the boot tests run a real Linux guest; debug builds are too slow for that).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
guest/build.sh
# The Debian guest for godwit/tests/debian.rs (cached by content hash under
# ~/.cache/godwit/debian; the first build takes 10-13 minutes).
guest/debian/build.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release --workspace
# The benchmark's quick preset must complete (its numbers are not checked
# here): every mode and strategy, and QEMU, on the testbed when root.
out=$(mktemp -d /tmp/godwit-bench-check.XXXXXX)
trap 'rm -rf "$out"' EXIT
./target/release/godwit bench --preset quick --out "$out"
# One application cell must complete with its checks (no iperf3 error, a
# client that keeps its connections): the Debian guest under iperf3 both
# ways, post-copy dual, on the testbed (root only; the apps preset says so
# otherwise).
if [ "$(id -u)" -eq 0 ]; then
    ./target/release/godwit bench --preset apps-quick --only stream --out "$out/apps"
else
    echo "test: NOT RUN: the apps cell (it needs root for the testbed)" >&2
fi
