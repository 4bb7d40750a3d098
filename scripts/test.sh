#!/usr/bin/env bash
# Runs every test: unit and property tests, golden outputs, start-up refusals, and the
# integration tests against a real Kafka-protocol broker (started here, stopped on exit).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh --test pipeline`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh

RUN=$(mktemp -d "${TMPDIR:-/tmp}/vigil-test.XXXXXX")
cleanup() { scripts/broker.sh stop "$RUN"; rm -rf "$RUN"; }
trap cleanup EXIT
eval "$(scripts/broker.sh start "$RUN" 3)"
export VIGIL_TEST_BROKERS=$VIGIL_BROKERS
echo "test: broker at $VIGIL_TEST_BROKERS" >&2

# Worker processes spawned by the tests are CPU-heavy: on a small machine run few at once.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-3}
cargo test --locked "$@"
# The benchmarks are not run here (speed lives in benches/), and no GPU is here, but both the
# benchmarks and the GPU build (CUDA/TensorRT provider registration) must keep compiling.
if [ $# -eq 0 ]; then
  cargo check --locked --benches --quiet
  cargo check --locked --features cuda --quiet
  # The fuzz targets, briefly each (a longer run: scripts/fuzz.sh 1200).
  scripts/fuzz.sh "${VIGIL_FUZZ_SECS:-45}"
fi
