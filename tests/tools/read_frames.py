"""Reads a topic from the beginning with confluent-kafka (a client independent of vigil's) and
prints one JSON line per record, in partition order: partition, offset, key, the headers
(decoded as UTF-8) and the value's size and first two bytes (hex).

  read_frames.py BROKERS TOPIC [IDLE_SECS]

Waits up to 60 s for the first record (joining the group takes a few seconds), then stops
once no record has arrived for IDLE_SECS (default 5).
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError


def main():
    brokers, topic = sys.argv[1], sys.argv[2]
    idle = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"read-frames-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    c.subscribe([topic])
    last = time.monotonic()
    seen = False
    while time.monotonic() - last < (idle if seen else 60.0):
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            sys.exit(f"read_frames: {m.error()}")
        last = time.monotonic()
        seen = True
        value = m.value() or b""
        print(json.dumps({
            "partition": m.partition(),
            "offset": m.offset(),
            "key": (m.key() or b"").decode("utf-8", "replace"),
            "headers": {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])},
            "bytes": len(value),
            "head": value[:2].hex(),
        }), flush=True)
    c.close()


if __name__ == "__main__":
    main()
