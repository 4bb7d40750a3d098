"""Decodes vigil's Avro records with implementations independent of vigil's, printing each
record as one JSON line:

  decode_avro.py single SCHEMA.avsc FILE...
      fastavro: checks the single-object header (C3 01 + the schema's CRC-64-AVRO fingerprint)
      and reads the datum with the schema.
  decode_avro.py registry URL FILE...
      confluent-kafka's AvroDeserializer: reads the Confluent wire format (00 + schema id),
      fetching the writer schema from the registry at URL.
"""
import io
import json
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form


def single(schema_path, paths):
    schema = fastavro.parse_schema(json.load(open(schema_path)))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    for path in paths:
        data = open(path, "rb").read()
        if data[:2] != b"\xc3\x01":
            sys.exit(f"{path}: no single-object marker")
        # fastavro gives the fingerprint's bytes in little-endian order, as the header holds them.
        if data[2:10] != fp:
            sys.exit(f"{path}: fingerprint {data[2:10].hex()} is not the schema's {fp.hex()}")
        record = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)
        print(json.dumps(record, default=str))


def registry(url, paths):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": url}))
    for path in paths:
        data = open(path, "rb").read()
        if data[:1] != b"\x00":
            sys.exit(f"{path}: no Confluent magic byte")
        record = deserializer(data, SerializationContext("vigil", MessageField.VALUE))
        print(json.dumps(record, default=str))


if __name__ == "__main__":
    mode, arg, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    {"single": single, "registry": registry}[mode](arg, paths)
