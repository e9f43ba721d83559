#!/bin/sh
# Run the deterministic simulator (tests/sim) over many seeds, with
# progress: scripts/simulate.sh --seeds N [--from S] [--actors a,b,...] [--verbose]
# A failing seed prints the command that replays it.
set -e
cd "$(dirname "$0")/.."
exec cargo run --quiet --release --example simulate -- "$@"
