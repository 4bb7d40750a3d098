"""Poison pills between good frames, from an outside producer (confluent-kafka): records that
once stopped a partition for good. Each is tagged with a `case` header; prints one JSON line per
delivered record: {"case", "expect", "partition", "offset"}, where `expect` is `observation` or
the dead-letter reason.

usage: pills.py BROKERS TOPIC DLQ_LIMIT
(DLQ_LIMIT: the dead-letter topic's max.message.bytes; one pill is a non-JPEG just over it)
"""
import json
import os
import sys
import time

from confluent_kafka import Producer

HERE = os.path.dirname(os.path.abspath(__file__))
FACES = os.path.join(HERE, "..", "data", "faces")


def read(name):
    with open(os.path.join(FACES, name), "rb") as f:
        return f.read()


def headers(camera, seq, captured_at=None, **extra):
    captured_at = captured_at if captured_at is not None else int(time.time() * 1000) - 60_000 + seq
    h = [("site", b"site-009"), ("camera", camera.encode()), ("captured_at", str(captured_at).encode()),
         ("seq", str(seq).encode())]
    h += [(k, v if isinstance(v, bytes) else v.encode()) for k, v in extra.items()]
    return h


def corpus(dlq_limit):
    good = read("grace_hopper.jpg")
    n = iter(range(1, 1000))

    def frame(case, expect, camera, hdrs=None, value=good, key=None):
        return case, expect, camera.encode() if key is None else key, hdrs or headers(camera, next(n)), value

    yield frame("good", "observation", "cam-p")
    yield frame("seq_over_i64", "bad_header", "cam-p", headers("cam-p", 2**63))
    yield frame("seq_negative", "bad_header", "cam-p", headers("cam-p", -1))
    yield frame("good", "observation", "cam-p")
    # A header whose name is not UTF-8: the frame itself is fine.
    yield frame("header_name_not_utf8", "observation", "cam-p", headers("cam-p", 5) + [(b"\xff\xfe", b"x")])
    for case, at in [("captured_at_negative", -5), ("captured_at_seconds", 1_700_000_000),
                     ("captured_at_microseconds", int(time.time() * 1_000_000)),
                     ("captured_at_far_future", int(time.time() * 1000) + 86_400_000),
                     ("captured_at_i64_max", 2**63 - 1), ("captured_at_i64_min", -(2**63))]:
        yield frame(case, "bad_header", "cam-p", headers("cam-p", next(n), captured_at=at))
    yield frame("good", "observation", "cam-p")
    yield frame("no_key", "missing_header", "cam-p", key=b"")
    yield frame("key_differs", "bad_header", "cam-p", key=b"cam-q")
    # A dead letter larger than the dead-letter topic takes: sent without its payload.
    yield frame("dead_letter_too_large", "not_jpeg", "cam-p", value=b"\x00" * (dlq_limit + 1024))
    yield frame("good", "observation", "cam-p")


def main():
    brokers, topic, dlq_limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    results, errors = [], []

    def done(case, expect):
        def cb(err, msg):
            if err is not None:
                errors.append(f"delivery failed for {case}: {err}")
            else:
                results.append({"case": case, "expect": expect, "partition": msg.partition(),
                                "offset": msg.offset()})
        return cb

    plain = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "message.max.bytes": 10_000_000})
    zstd = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "compression.type": "zstd"})
    for case, expect, key, hdrs, value in corpus(dlq_limit):
        hdrs = hdrs + [("case", case.encode())]
        plain.produce(topic, key=key or None, value=value, headers=hdrs, on_delivery=done(case, expect))
        plain.flush(30)  # one at a time: the order on the partition is the corpus order
    # A good frame in a zstd-compressed batch, then a plain one after it.
    zstd.produce(topic, key=b"cam-p", value=read("sample1.jpg"),
                 headers=headers("cam-p", 900) + [("case", b"zstd")], on_delivery=done("zstd", "observation"))
    zstd.flush(30)
    plain.produce(topic, key=b"cam-p", value=read("grace_hopper.jpg"),
                  headers=headers("cam-p", 901) + [("case", b"good")], on_delivery=done("good", "observation"))
    remaining = plain.flush(30)
    if remaining or errors:
        sys.exit("; ".join(errors) or f"{remaining} records not delivered")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
