#!/usr/bin/env bash
# Runs every test: formatting and lints (cargo fmt, clippy), unit and property tests, golden
# outputs, start-up refusals, the integration tests against a real Kafka-protocol broker
# (started here, stopped on exit; TLS through stunnel), the dependency policy (cargo deny) and
# the fuzz targets briefly. Extra arguments go to `cargo test` (e.g.
# `scripts/test.sh --test pipeline`) and skip everything but the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf 'test: %s\n' "$*" >&2; }

# A clean run writes about 5.5 GB under target/ (test binaries, the CUDA check, the fuzz targets;
# the broker's first build more under ~/.cache).
# A compiler that runs out of disk fails with an error that rarely says so: warn first.
free_mb=$(( $(df -Pk "$ROOT" | awk 'NR==2 {print $4}') / 1024 ))
if [ "$free_mb" -lt 6144 ]; then
  say "warning: only $free_mb MB free on the disk holding $ROOT; a clean run needs about 5.5 GB"
fi
scripts/bootstrap.sh

if [ $# -eq 0 ]; then
  say "cargo fmt --check"
  cargo fmt --check
  say "cargo clippy --all-targets -- -D warnings"
  cargo clippy --locked --all-targets --quiet -- -D warnings
  # The Python tools (models/, scripts/, tests/): syntax errors, undefined names, unused imports
  # and variables (pyflakes' checks, configured in pyproject.toml), with the ruff pinned in
  # scripts/requirements.txt.
  say "ruff check models scripts tests"
  .venv/bin/ruff check --quiet models scripts tests
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/vigil-test.XXXXXX")
cleanup() { scripts/broker.sh stop "$RUN"; rm -rf "$RUN"; }
trap cleanup EXIT
eval "$(scripts/broker.sh start "$RUN" 3)"
export VIGIL_TEST_BROKERS=$VIGIL_BROKERS
echo "test: broker at $VIGIL_TEST_BROKERS" >&2

# Worker processes spawned by the tests are CPU-heavy: on a small machine run few at once.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-3}
cargo test --locked "$@"
# The broker is done with: stopped before the checks below, which it would otherwise slow (an
# idle nisshi that many test groups have used keeps about half a core busy).
scripts/broker.sh stop "$RUN"
# The benchmarks are not run here (speed lives in benches/), and no GPU is here, but both the
# benchmarks and the GPU build (CUDA/TensorRT provider registration) must keep compiling.
if [ $# -eq 0 ]; then
  cargo check --locked --benches --quiet
  cargo check --locked --features cuda --quiet
  # Licences, banned crates and sources of every dependency (deny.toml). cargo-deny is built
  # once per user, like the broker. The advisories check needs the RustSec database from
  # GitHub, which these machines cannot reach (README, "Dependencies").
  DENY_VERSION=0.20.2
  DENY_HOME=${VIGIL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil}/cargo-deny-$DENY_VERSION
  if [ ! -x "$DENY_HOME/bin/cargo-deny" ]; then
    say "building cargo-deny $DENY_VERSION into $DENY_HOME (once per user; a few minutes)"
    cargo install cargo-deny --version "$DENY_VERSION" --locked --root "$DENY_HOME" --quiet
  fi
  say "cargo deny check licenses bans sources"
  "$DENY_HOME/bin/cargo-deny" check licenses bans sources
  # The fuzz targets, briefly each (a longer run: scripts/fuzz.sh 1200).
  scripts/fuzz.sh "${VIGIL_FUZZ_SECS:-45}"
fi
