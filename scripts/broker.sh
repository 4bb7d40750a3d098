#!/usr/bin/env bash
# Starts or stops a local Kafka-protocol broker (nisshi) for the demo and the tests.
#
#   scripts/broker.sh start DIR [PARTITIONS]   start on a free loopback port, storage in DIR,
#                                              create vigil's topics; prints VIGIL_BROKERS=HOST:PORT
#   scripts/broker.sh stop DIR                 stop the broker started with DIR
#
# DIR/broker.env holds VIGIL_BROKERS and the broker's pid; DIR/broker.log its log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${VIGIL_TOOLS_DIR:-$ROOT/.tools}
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [PARTITIONS]" >&2; exit 2; }

case "$cmd" in
start)
  partitions=${3:-6}
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # nisshi reads sqlite://PATH as relative to its working directory: run it inside DIR.
  (cd "$dir" && exec "$TOOLS/bin/nisshi" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://broker.db" \
    >"$dir/broker.log" 2>&1) &
  pid=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || { echo "broker exited; log:" >&2; cat "$dir/broker.log" >&2; exit 1; }
    sleep 0.1
  done
  printf 'VIGIL_BROKERS=127.0.0.1:%s\nBROKER_PID=%s\n' "$port" "$pid" >"$dir/broker.env"
  # The state topic is compacted and co-partitioned with the frames topic (same count). The
  # frames and dead-letter topics carry frames of up to 4 MiB plus headers (`vigil topics
  # create` sets the same).
  for topic in vigil.frames vigil.observations vigil.dlq vigil.violations vigil.state; do
    config=()
    [ "$topic" = vigil.state ] && config=(--config cleanup.policy=compact)
    case "$topic" in vigil.frames|vigil.dlq) config=(--config max.message.bytes=4456448) ;; esac
    "$TOOLS/bin/nisshi" topic create --broker "tcp://127.0.0.1:$port" \
      --partitions "$partitions" "${config[@]}" --silent "$topic" >>"$dir/broker.log" 2>&1 || {
        echo "could not create topic $topic; log:" >&2; tail -20 "$dir/broker.log" >&2; exit 1; }
  done
  echo "VIGIL_BROKERS=127.0.0.1:$port"
  ;;
stop)
  [ -f "$dir/broker.env" ] || exit 0
  pid=$(sed -n 's/^BROKER_PID=//p' "$dir/broker.env")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/broker.env"
  ;;
*) echo "usage: $0 start|stop DIR [PARTITIONS]" >&2; exit 2 ;;
esac
