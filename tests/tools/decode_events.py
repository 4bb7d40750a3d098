"""Decodes vigil violation events with fastavro, an Avro implementation independent of vigil's:
checks the single-object header (C3 01 + the schema's CRC-64-AVRO fingerprint) and prints each
event as one JSON line.

usage: decode_events.py SCHEMA.avsc FILE...
"""
import io
import json
import struct
import sys

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form


def main():
    schema = fastavro.parse_schema(json.load(open(sys.argv[1])))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    for path in sys.argv[2:]:
        data = open(path, "rb").read()
        if data[:2] != b"\xc3\x01":
            sys.exit(f"{path}: no single-object marker")
        # fastavro gives the fingerprint's bytes in little-endian order, as the header holds them.
        if data[2:10] != fp:
            sys.exit(f"{path}: fingerprint {data[2:10].hex()} is not the schema's {fp.hex()}")
        record = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema)
        print(json.dumps(record, default=str))


if __name__ == "__main__":
    main()
