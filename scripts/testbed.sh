#!/usr/bin/env bash
# The migration testbed: two network namespaces (godwit-src 10.77.0.1,
# godwit-dst 10.77.0.2) joined by a veth pair shaped with tbf, 1 Gbit/s each
# way by default. A thin wrapper over `godwit testbed` (the logic lives in
# godwit/src/testbed.rs, which `godwit bench` uses too). Needs root.
#
#   scripts/testbed.sh up [--rate 1gbit] [--burst BYTES] [--latency-ms 5]
#   scripts/testbed.sh status
#   scripts/testbed.sh measure      # up, bulk + 4 KiB ping-pong, down
#   scripts/testbed.sh down
#   ip netns exec godwit-src COMMAND...   # run something on the source host
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
up | down | status | measure) ;;
*)
    echo "usage: $0 up|down|status|measure [options]   (see: godwit testbed --help)" >&2
    exit 2
    ;;
esac
bin=./target/release/godwit
if [ ! -x "$bin" ]; then
    cargo build --release -q -p godwit
fi
exec "$bin" testbed "$@"
