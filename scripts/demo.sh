#!/usr/bin/env bash
# The demo: a local broker, one vigil worker, a gateway simulating six cameras on two sites
# (kitchens judged, dining rooms observed), and an outside producer sending a few corrupt frames.
# Prints the observations, dead letters and violation episodes that come out, a metrics
# excerpt, then stops everything.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/bootstrap.sh
echo "demo: building vigil (release)" >&2
cargo build --release --locked --quiet
VIGIL="$ROOT/target/release/vigil"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/vigil-demo.XXXXXX")
WORKER_PID=""
cleanup() {
  [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
  cp "$RUN/worker.log" "$ROOT/target/demo-worker.log" 2>/dev/null || true
  scripts/broker.sh stop "$RUN"
  rm -rf "$RUN"
}
trap cleanup EXIT
eval "$(scripts/broker.sh start "$RUN" 6)"
export VIGIL_BROKERS
echo "demo: broker at $VIGIL_BROKERS; topics vigil.frames, .observations, .dlq, .violations, .state (6 partitions)" >&2

METRICS=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Frames up to 1 MB (the broker's default message limit); a gateway would enforce the same.
MAX_FRAME=1000000
"$VIGIL" worker --metrics-addr "$METRICS" --progress-secs 5 --max-frame-bytes $MAX_FRAME \
  --debug-camera cam-0001 --debug-dir "$ROOT/target/demo-debug" 2>"$RUN/worker.log" &
WORKER_PID=$!
echo "demo: worker started (pid $WORKER_PID, metrics on http://$METRICS/metrics, log $RUN/worker.log)" >&2

echo "demo: gateway publishing 8 s at 2 fps from 6 cameras (kitchens judged, dining rooms observed)" >&2
"$VIGIL" gateway --source tests/data/faces --cameras 6 --sites 2 --zones kitchen,dining \
  --fps 2 --frames 16 --loop --width 1280 --max-frame-bytes $MAX_FRAME
echo "demo: an outside producer (Python confluent-kafka) sends 10 frames, 7 of them malformed" >&2
.venv/bin/python tests/tools/outside_producer.py "$VIGIL_BROKERS" vigil.frames $MAX_FRAME >/dev/null

echo; echo "== observations (96 from the gateway + 3 good outside frames) =="
"$VIGIL" tail --topic vigil.observations --count 99 --idle-secs 60
echo; echo "== dead letters =="
"$VIGIL" tail --topic vigil.dlq --count 7 --idle-secs 30
echo; echo "== violation episodes (vigil alerts: Avro events, deduplicated by event_id) =="
"$VIGIL" alerts --group demo-alerts --idle-secs 8
echo; echo "== metrics excerpt =="
python3 - "$METRICS" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("vigil_frames_", "vigil_model_info", "vigil_batch_size_count", "vigil_inference_duration_seconds_count", "vigil_episode", "vigil_violation_seconds")) and not line.endswith(" 0"):
        print(line)
PY
echo
kill -TERM "$WORKER_PID"
wait "$WORKER_PID" && echo "demo: worker drained, committed and exited 0 on SIGTERM"
echo "demo: annotated frames of cam-0001 (boxes, labels) are in target/demo-debug/"
WORKER_PID=""
