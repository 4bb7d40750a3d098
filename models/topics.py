"""Reading vigil's output topics from outside vigil: confluent-kafka for the records, fastavro
for vigil's single-object Avro (the C3 01 marker, the schema's CRC-64-AVRO fingerprint, the
datum). Used by the chaos scenario (`scripts/chaos.py`) and the episode evaluation
(`models/evaluate_episodes.py`)."""
import io
import json
import os
import time

import fastavro
from confluent_kafka import Consumer, TopicPartition
from fastavro.schema import fingerprint, to_parsing_canonical_form

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plain(schema):
    """The schema without logical types: timestamps stay milliseconds (longs)."""
    if isinstance(schema, dict):
        return {k: plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [plain(v) for v in schema]
    return schema


def single_object_header(parsed):
    """Avro's single-object marker and the schema's CRC-64-AVRO fingerprint (fastavro gives its
    bytes little-endian, as the header holds them): what precedes every record vigil writes."""
    return b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def avro_reader(name):
    """A function decoding one record of `schemas/<name>`, refusing any other framing or schema."""
    raw = json.load(open(os.path.join(ROOT, "schemas", name)))
    header = single_object_header(fastavro.parse_schema(raw))
    schema = fastavro.parse_schema(plain(raw))

    def read(data):
        if data[:10] != header:
            raise ValueError(f"not single-object {name}: {data[:10].hex()}")
        return fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)

    return read


class TopicReader:
    """Reads a topic from its beginning, incrementally, up to its current end."""

    def __init__(self, brokers, topic):
        self.topic = topic
        self.consumer = Consumer({
            "bootstrap.servers": brokers, "group.id": f"vigil-tools-reader-{os.getpid()}",
            "enable.auto.commit": False, "log_level": 2})
        meta = self.consumer.list_topics(topic, timeout=30).topics[topic]
        self.partitions = sorted(meta.partitions)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in self.partitions])
        self.next = {p: 0 for p in self.partitions}

    def catch_up(self, timeout=60):
        """The records written since the last call, up to the ends read now, and those ends."""
        ends = {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in self.partitions}
        out = []
        deadline = time.monotonic() + timeout
        while any(self.next[p] < ends[p] for p in self.partitions) and time.monotonic() < deadline:
            for m in self.consumer.consume(500, 0.5):
                if m.error():
                    continue
                self.next[m.partition()] = m.offset() + 1
                out.append(m)
        return out, ends

    def close(self):
        self.consumer.close()
