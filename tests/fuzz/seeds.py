"""Writes the fuzz targets' starting corpus: the intake target gets the dead-letter corpus
(every pill and malformed case the integration tests send, in the target's input layout), the
Avro target gets events and observations written by fastavro (an implementation independent of
vigil's) in single-object encoding, plus their v1 forms and the Confluent framing.

usage: seeds.py OUT_DIR   (writes OUT_DIR/intake/*, OUT_DIR/avro_readers/*)
"""
import hashlib
import io
import json
import os
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
SCHEMAS = os.path.join(ROOT, "schemas")
NOW = 1_800_000_000_000  # the intake target's clock


def intake_input(headers, key, value):
    """The intake target's layout: [n] ([len][name][len][value])* [has_key][len][key] value."""
    out = bytearray([len(headers)])
    for name, val in headers:
        out += bytes([len(name)]) + name + bytes([len(val)]) + val
    out += bytes([1 if key is not None else 0])
    key = key or b""
    out += bytes([len(key)]) + key
    return bytes(out) + value


def headers(camera=b"cam-a", seq=b"1", captured_at=str(NOW - 60_000).encode(), **extra):
    h = [(b"site", b"site-001"), (b"camera", camera), (b"captured_at", captured_at), (b"seq", seq)]
    return h + [(k.encode(), v) for k, v in extra.items()]


def minimal_jpeg(width, height):
    """The markers intake reads (SOI, SOF0, SOS, EOI) around two bytes of scan data."""
    return (b"\xff\xd8\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big")
            + bytes([3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
            + bytes([0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 0x3F, 0]) + b"\x12\x34\xff\xd9")


def intake(out):
    small = minimal_jpeg(640, 480)
    cases = {
        "good": (headers(), b"cam-a", small),
        "zone": (headers(zone=b"kitchen"), b"cam-a", small),
        "no_key": (headers(), None, small),
        "key_differs": (headers(), b"cam-b", small),
        "no_camera": (headers()[:1] + headers()[2:], b"cam-a", small),
        "seq_over_i64": (headers(seq=str(2**63).encode()), b"cam-a", small),
        "seq_negative": (headers(seq=b"-1"), b"cam-a", small),
        "captured_at_seconds": (headers(captured_at=b"1700000000"), b"cam-a", small),
        "captured_at_future": (headers(captured_at=str(NOW + 86_400_000).encode()), b"cam-a", small),
        "captured_at_i64_min": (headers(captured_at=str(-(2**63)).encode()), b"cam-a", small),
        "captured_at_text": (headers(captured_at=b"yesterday"), b"cam-a", small),
        "header_name_not_utf8": (headers() + [(b"\xff\xfe", b"x")], b"cam-a", small),
        "empty": (headers(), b"cam-a", b""),
        "truncated": (headers(), b"cam-a", small[: len(small) // 2]),
        "not_jpeg": (headers(), b"cam-a", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
        "bomb": (headers(), b"cam-a", minimal_jpeg(60000, 60000)),
    }
    for name, (h, key, value) in cases.items():
        write(out, "intake", name, intake_input(h, key, value))


def sample_event(version):
    e = {
        "event_id": "e1", "kind": "opened", "episode_id": "ep-1", "site": "site-001",
        "camera": "cam-0001", "zone": "kitchen", "rule": "mask_required", "severity": "minor",
        "reason": None, "opened_at": NOW, "last_seen_at": NOW + 3000, "resolved_at": None,
        "event_time": NOW + 3000, "peak_level": 0.97, "mean_level": 0.9, "frames": 7,
        "evidence": {"topic": "vigil.frames", "partition": 3, "offset": 42, "captured_at": NOW + 1000,
                     "level": 0.99},
        "models": [{"name": "mask", "version": "1"}], "worker": "w1", "sequence": 0,
    }
    if version == 1:
        del e["sequence"]
    return e


def avro(out):
    event_schema = os.path.join(SCHEMAS, "violation_event.avsc")
    v1_schema = os.path.join(SCHEMAS, "history", "violation_event.v1.avsc")
    obs_schema = os.path.join(SCHEMAS, "observation.avsc")
    for name, path, record in [
        ("event", event_schema, sample_event(2)),
        ("event_resolved", event_schema, dict(sample_event(2), kind="resolved", severity="critical",
                                              reason="cleared", resolved_at=NOW + 9000, zone=None,
                                              evidence=None, sequence=2)),
        ("event_v1", v1_schema, sample_event(1)),
        ("observation", obs_schema, None),
    ]:
        schema = fastavro.parse_schema(json.load(open(path)))
        if record is None:
            record = minimal(schema)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        write(out, "avro_readers", name, b"\xc3\x01" + fp + buf.getvalue())
        write(out, "avro_readers", name + "_confluent", b"\x00\x00\x00\x00\x01" + buf.getvalue())


def minimal(schema):
    """A record with every field at a small valid value."""
    t = schema["type"] if isinstance(schema, dict) else schema
    if isinstance(schema, list):
        return minimal(next(s for s in schema if s != "null")) if "null" not in schema else None
    if t == "record":
        return {f["name"]: minimal(f["type"]) for f in schema["fields"]}
    if t == "array":
        return [minimal(schema["items"])]
    if t == "map":
        return {"label": minimal(schema["values"])}
    if t == "enum":
        return schema["symbols"][0]
    if isinstance(t, dict):
        return minimal(t)
    return {"string": "x", "long": 1, "int": 1, "double": 0.5, "float": 0.5, "boolean": True,
            "bytes": b"x", "null": None}[t]


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"seed-{name}-{hashlib.sha1(data).hexdigest()[:8]}"), "wb") as f:
        f.write(data)


if __name__ == "__main__":
    intake(sys.argv[1])
    avro(sys.argv[1])
