#!/usr/bin/env bash
# End-to-end load test: fills the frames topic with a backlog from simulated kitchen cameras,
# then lets a worker drain it once per batching setting, each into its own output topics, and
# reports frames per second, as measured from the observations' own timestamps, so worker
# start-up and group joins are not counted.
#
#   scripts/loadtest.sh [FRAMES_PER_CAMERA=20] [CAMERAS=10] [SETTINGS="1:0 4:5 8:10 16:20"]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
FRAMES=${1:-20}; CAMERAS=${2:-10}; SETTINGS=${3:-"1:0 4:5 8:10 16:20"}
scripts/bootstrap.sh
cargo build --release --locked --quiet
# VIGIL_BIN measures another build (e.g. an older release) against the same load.
VIGIL=${VIGIL_BIN:-$ROOT/target/release/vigil}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/vigil-load.XXXXXX")
trap 'scripts/broker.sh stop "$RUN"; rm -rf "$RUN"' EXIT
eval "$(scripts/broker.sh start "$RUN" 6)"
export VIGIL_BROKERS
TOTAL=$((FRAMES * CAMERAS))
echo "load: publishing $TOTAL frames ($CAMERAS kitchen cameras x $FRAMES)" >&2
"$VIGIL" gateway --source tests/data/faces --cameras "$CAMERAS" --zones kitchen --fps 50 \
  --frames "$FRAMES" --width 1280 2>/dev/null
printf '%-10s %-12s %10s %10s\n' max_batch max_delay_ms frames/s vs_first
first=""
for s in $SETTINGS; do
  b=${s%%:*}; d=${s#*:}
  t="load.b$b"
  "$VIGIL" topics create --partitions 6 --observations-topic "$t.obs" --dlq-topic "$t.dlq" \
    --violations-topic "$t.vio" --state-topic "$t.state" >/dev/null
  "$VIGIL" worker --group "$t" --max-batch "$b" --max-delay-ms "$d" --metrics-addr "" --max-staleness-secs 0 \
    --observations-topic "$t.obs" --dlq-topic "$t.dlq" --violations-topic "$t.vio" \
    --state-topic "$t.state" 2>"$RUN/$t.log" &
  pid=$!
  "$VIGIL" tail --topic "$t.obs" --count "$TOTAL" --json --idle-secs 120 2>/dev/null >"$RUN/$t.json"
  if ! kill -TERM "$pid" 2>/dev/null; then
    echo "load: the worker stopped early; its log:" >&2; tail -5 "$RUN/$t.log" >&2; exit 1
  fi
  wait "$pid" || true
  rate=$(python3 - "$RUN/$t.json" <<'PY'
import json, sys
ts = sorted(json.loads(l)["processed_at_ms"] for l in open(sys.argv[1]) if l.strip())
span = (ts[-1] - ts[0]) / 1000 or 1e-3
print(f"{(len(ts) - 1) / span:.1f}")
PY
)
  [ -n "$first" ] || first=$rate
  ratio=$(python3 -c "print(f'{$rate / $first:.2f}x')")
  printf '%-10s %-12s %10s %10s\n' "$b" "$d" "$rate" "$ratio"
done
