#!/usr/bin/env bash
# The demo: a local broker, one vigil worker, two site gateways reading six RTSP cameras (served
# locally by GStreamer, tests/tools/rtsp_cameras.py) from a camera file per site (kitchens judged
# for masks and animals, dining rooms observed), simulated cameras: a prep-zone camera showing
# bare hands (gloves rule), a kitchen camera with a cat in view (animals rule), an outside
# producer sending a few corrupt frames,
# and `vigil ingest` taking three uploads over HTTP (a camera's JPEG and a phone's form) with curl.
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
INGEST_PID=""
RTSP_PID=""
SITE_GWS=()
cleanup() {
  for pid in "${SITE_GWS[@]}" $RTSP_PID; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
  [ -n "$INGEST_PID" ] && kill "$INGEST_PID" 2>/dev/null && wait "$INGEST_PID" 2>/dev/null || true
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
  --debug-camera cam-0001 --debug-dir "$ROOT/target/demo-debug" \
  --evidence-url "file://$ROOT/target/demo-evidence" 2>"$RUN/worker.log" &
WORKER_PID=$!
echo "demo: worker started (pid $WORKER_PID, metrics on http://$METRICS/metrics, log $RUN/worker.log)" >&2

mkdir -p "$RUN/bare-hands"
cp tests/data/gloves/bare_hand_*.jpg "$RUN/bare-hands/"
echo "demo: two site gateways (one camera file per restaurant) sampling 6 RTSP cameras at 2 fps" >&2
echo "      for 8 s (kitchens judged, dining rooms observed), and simulated cameras: a prep-zone" >&2
echo "      camera on bare hands, and a kitchen camera with a cat in view" >&2
# The restaurants' cameras: GStreamer's RTSP server streams a photo per camera as live H.264.
RTSP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOUNTS=()
for i in 1 2 3 4 5 6; do
  photo=$( (echo grace_hopper.jpg; for n in 1 2 3 4 5; do echo "sample$n.jpg"; done) | sed -n "${i}p")
  MOUNTS+=(--mount "cam-000$i=$ROOT/tests/data/faces/$photo")
done
/usr/bin/python3 tests/tools/rtsp_cameras.py --port "$RTSP_PORT" "${MOUNTS[@]}" >"$RUN/rtsp.out" 2>"$RUN/rtsp.log" &
RTSP_PID=$!
for _ in $(seq 1 100); do grep -q ready "$RUN/rtsp.out" 2>/dev/null && break; sleep 0.1; done
# One camera file per site: site-001's cameras are in its kitchen, site-002's in its dining room.
for site in 1 2; do
  zone=$([ $site = 1 ] && echo kitchen || echo dining)
  {
    echo "site = \"site-00$site\""
    for i in $([ $site = 1 ] && echo 1 3 5 || echo 2 4 6); do
      printf '[[camera]]\nid = "cam-000%s"\nzone = "%s"\nurl = "rtsp://127.0.0.1:%s/cam-000%s"\nfps = 2.0\nwidth = 1280\n' \
        "$i" "$zone" "$RTSP_PORT" "$i"
    done
  } >"$RUN/site-00$site.toml"
done
echo "demo: site-001's camera file:" >&2; sed 's/^/      /' "$RUN/site-001.toml" >&2
"$VIGIL" gateway --source "$RUN/bare-hands" --cameras 1 --zones prep --camera-prefix prep- \
  --fps 2 --frames 16 --loop --max-frame-bytes $MAX_FRAME 2>"$RUN/gateway-prep.log" &
PREP_GW=$!
"$VIGIL" gateway --source tests/data/animals --cameras 1 --zones kitchen --camera-prefix pet- \
  --fps 2 --frames 16 --loop --max-frame-bytes $MAX_FRAME 2>"$RUN/gateway-pet.log" &
PET_GW=$!
SITE_GWS=()
for site in 1 2; do
  "$VIGIL" --log-format json gateway --cameras-file "$RUN/site-00$site.toml" \
    --buffer-dir "$RUN/buffer-00$site" --max-frame-bytes $MAX_FRAME --progress-secs 1 \
    2>"$RUN/gateway-site-00$site.log" &
  SITE_GWS+=($!)
done
# Until all six cameras are up (RTSP streams open one after the other), then 8 s more.
for _ in $(seq 1 300); do
  [ "$(cat "$RUN"/gateway-site-00*.log | grep -c '"camera up"')" -ge 6 ] && break; sleep 0.1
done
sleep 8
kill -TERM "${SITE_GWS[@]}"; wait "${SITE_GWS[@]}"
SITE_GWS=()
kill -TERM "$RTSP_PID"; wait "$RTSP_PID" || true; RTSP_PID=""
wait "$PREP_GW" "$PET_GW"
# What the site gateways published: the last progress line each logs on its way out.
SITE_FRAMES=$(python3 - "$RUN"/gateway-site-00*.log <<'PY'
import json, sys
total = 0
for path in sys.argv[1:]:
    lines = [json.loads(l) for l in open(path) if '"gateway progress"' in l]
    total += lines[-1]["published"]
print(total)
PY
)
echo "demo: the site gateways published $SITE_FRAMES frames" >&2
echo "demo: an outside producer (Python confluent-kafka) sends 10 frames, 7 of them malformed" >&2
.venv/bin/python tests/tools/outside_producer.py "$VIGIL_BROKERS" vigil.frames $MAX_FRAME >/dev/null

echo "demo: vigil ingest on HTTP; a token for site-001 made with \`vigil ingest hash-token\`" >&2
TOKEN_LINE=$("$VIGIL" ingest hash-token --sites site-001)
TOKEN=$(printf '%s\n' "$TOKEN_LINE" | sed -n '1s/^.*: //p')
printf '%s\n' "$TOKEN_LINE" | sed -n 's/^tokens-file line: //p' >"$RUN/tokens"
"$VIGIL" ingest --addr 127.0.0.1:0 --tokens "$RUN/tokens" --max-frame-bytes $MAX_FRAME \
  >"$RUN/ingest.out" 2>"$RUN/ingest.log" &
INGEST_PID=$!
for _ in $(seq 1 100); do grep -q "listening on" "$RUN/ingest.out" 2>/dev/null && break; sleep 0.1; done
INGEST=$(sed -n 's/^ingest listening on //p' "$RUN/ingest.out")
for photo in sample1 sample2; do
  curl -sS --fail-with-body -X POST "http://$INGEST/v1/frames?site=site-001&camera=cam-http-1&zone=kitchen" \
    -H "Authorization: Bearer $TOKEN" -H "Content-Type: image/jpeg" \
    --data-binary "@tests/data/faces/$photo.jpg"; echo
done
curl -sS --fail-with-body "http://$INGEST/v1/frames?site=site-001&camera=phone-manager&zone=kitchen" \
  -H "Authorization: Bearer $TOKEN" -F "file=@tests/data/faces/sample3.jpg"; echo
echo "demo: and a token for another site is refused:" >&2
curl -sS "http://$INGEST/v1/frames?site=site-002&camera=cam-http-1" \
  -H "Authorization: Bearer $TOKEN" --data-binary "@tests/data/faces/sample1.jpg" \
  -H "Content-Type: image/jpeg" -w ' (HTTP %{http_code})'; echo
kill -TERM "$INGEST_PID"; wait "$INGEST_PID" || true; INGEST_PID=""

EXPECTED=$((SITE_FRAMES + 32 + 3 + 3))
echo; echo "== observations ($SITE_FRAMES from the site gateways + 32 simulated + 3 good outside frames + 3 uploads) =="
"$VIGIL" tail --topic vigil.observations --count $EXPECTED --idle-secs 120
echo; echo "== dead letters =="
"$VIGIL" tail --topic vigil.dlq --count 7 --idle-secs 30
echo; echo "== violation episodes (vigil alerts: Avro events, deduplicated by event_id) =="
"$VIGIL" alerts --group demo-alerts --idle-secs 8 | tee "$RUN/alerts.txt"
for rule in mask_required gloves_required no_animals; do
  grep -q "$rule" "$RUN/alerts.txt" || { echo "demo: no $rule episode opened; worker log: $RUN/worker.log" >&2; exit 1; }
done
echo "demo: episodes opened for masks, gloves and animals"
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
echo "demo: evidence pictures of the openings (faces pixelated) are in target/demo-evidence/;"
echo "      \`vigil console --evidence-url file://$ROOT/target/demo-evidence\` shows them (with a broker)"
WORKER_PID=""
