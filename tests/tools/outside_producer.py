"""An outside producer (confluent-kafka, its own librdkafka) sending a corpus of good and
malformed frames, each tagged with a `case` header. Prints one JSON line per delivered record:
{"case": ..., "partition": ..., "offset": ...}.

usage: outside_producer.py BROKERS TOPIC [MAX_FRAME_BYTES]
(the over-size case is a valid JPEG padded to one byte over MAX_FRAME_BYTES, default 4 MiB)
"""
import json
import os
import sys

from confluent_kafka import Producer

HERE = os.path.dirname(os.path.abspath(__file__))
FACES = os.path.join(HERE, "..", "data", "faces")


def read(name):
    with open(os.path.join(FACES, name), "rb") as f:
        return f.read()


def with_dimensions(jpeg, width, height):
    """Rewrites the size in the first start-of-frame marker, leaving the rest intact."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data):
        assert data[i] == 0xFF
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data[i + 5 : i + 7] = height.to_bytes(2, "big")
            data[i + 7 : i + 9] = width.to_bytes(2, "big")
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def tiny_png():
    """A valid 2x2 RGB PNG: an image, but not a JPEG."""
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\0" + b"\x80\x40\x20" * 2 for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def headers(camera, seq, **extra):
    h = {"site": "site-007", "camera": camera, "captured_at": str(1_700_000_000_000 + seq), "seq": str(seq)}
    h.update(extra)
    return h


def corpus(max_frame_bytes):
    small = read("grace_hopper.jpg")  # 61 KB, 512x600
    big = small + b"\0" * (max_frame_bytes + 1 - len(small))
    yield "good", "cam-a", headers("cam-a", 1), small
    yield "empty", "cam-b", headers("cam-b", 2), b""
    yield "truncated", "cam-b", headers("cam-b", 3), small[: len(small) // 2]
    yield "png", "cam-c", headers("cam-c", 4), tiny_png()
    yield "bomb", "cam-c", headers("cam-c", 5), with_dimensions(small, 60000, 60000)
    h = headers("cam-d", 6)
    del h["camera"]
    yield "no_camera", "cam-d", h, small
    yield "oversize", "cam-d", headers("cam-d", 7), big
    yield "bad_captured_at", "cam-e", headers("cam-e", 8, captured_at="yesterday"), small
    yield "good", "cam-e", headers("cam-e", 9, zone="kitchen"), read("sample1.jpg")
    yield "good", "cam-a", headers("cam-a", 10), small


def main():
    brokers, topic = sys.argv[1], sys.argv[2]
    max_frame_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 4 * 1024 * 1024
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "message.max.bytes": 10_000_000})
    results, errors = [], []

    def done(case):
        def cb(err, msg):
            if err is not None:
                errors.append(f"delivery failed for {case}: {err}")
            else:
                results.append({"case": case, "partition": msg.partition(), "offset": msg.offset()})

        return cb

    for case, key, hdrs, value in corpus(max_frame_bytes):
        hdrs = dict(hdrs, case=case)
        p.produce(topic, key=key, value=value, headers=list(hdrs.items()), on_delivery=done(case))
        p.poll(0)
    remaining = p.flush(30)
    if remaining or errors:
        sys.exit("; ".join(errors) or f"{remaining} records not delivered")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
