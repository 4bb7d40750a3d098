#!/usr/bin/env bash
# Fuzzes what reads untrusted bytes: intake (headers, key, event time, size), the JPEG structure
# reader, the decode path behind the pixel budget, and the Avro readers of `vigil tail` and
# `vigil alerts`. Uses cargo-fuzz (libFuzzer) on the nightly toolchain, installing what is
# missing. Seeds: tests/fuzz/corpus/<target> (committed, minimised) plus the test images.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET=60] [TARGET…]
#
# A crash leaves its input in tests/fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(intake jpeg_sniff decode avro_readers)
say() { printf 'fuzz: %s\n' "$*" >&2; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  say "installing the nightly toolchain (libFuzzer needs it)"
  if ! rustup toolchain install nightly --profile minimal; then
    # Only the toolchain download can fail here; say so loudly rather than pass silently.
    say "SKIPPED: no nightly toolchain and none could be installed; the fuzz targets did not run"
    exit 0
  fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
scripts/bootstrap.sh
# The decode target runs OpenCV; the Avro target needs nothing else; none needs ONNX Runtime.
FUZZ=tests/fuzz
# No sanitizer: librdkafka's build links test programs against zstd without the ASan
# runtime, and the code under test is safe Rust (panics and debug assertions are what is
# caught) over system OpenCV, which ASan would not instrument anyway.
say "building the targets (debug assertions on)"
cargo +nightly fuzz build --fuzz-dir "$FUZZ" --debug-assertions --sanitizer none
for t in "${TARGETS[@]}"; do
  corpus="$FUZZ/corpus/$t"
  mkdir -p "$corpus" "$FUZZ/artifacts/$t"
  seeds=()
  case "$t" in
    jpeg_sniff|decode) seeds=(tests/data/faces) ;;
  esac
  say "$t for ${SECS}s"
  # New inputs go to a scratch copy, so the committed corpus only changes on purpose
  # (scripts/fuzz.sh … then `cargo fuzz cmin` to refresh it).
  scratch=$(mktemp -d)
  cp -r "$corpus/." "$scratch/" 2>/dev/null || true
  log="$scratch.log"
  status=0
  cargo +nightly fuzz run --fuzz-dir "$FUZZ" --debug-assertions --sanitizer none "$t" "$scratch" "${seeds[@]}" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 \
    -artifact_prefix="$FUZZ/artifacts/$t/" >"$log" 2>&1 || status=$?
  grep -E 'stat::number_of_executed_units|stat::new_units_added|cov: .*corp' "$log" | tail -3 >&2 || true
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    say "$t failed (exit $status):"; grep -E 'ERROR|SUMMARY|panicked|error' -A5 "$log" | head -40 >&2
    ls "$FUZZ/artifacts/$t" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
done
say "no crash"
