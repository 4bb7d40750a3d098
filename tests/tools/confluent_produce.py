"""Publishes one record in the Confluent wire format with confluent-kafka's AvroSerializer, as a
producer from outside vigil would: the serializer registers SCHEMA under TOPIC-value.

usage: confluent_produce.py BROKERS TOPIC REGISTRY_URL SCHEMA.avsc KEY RECORD_JSON
Prints the registered schema id.
"""
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    brokers, topic, url, schema_path, key, record = sys.argv[1:7]
    registry = SchemaRegistryClient({"url": url})
    serializer = AvroSerializer(registry, open(schema_path).read())
    value = serializer(json.loads(record), SerializationContext(topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    errors = []
    producer.produce(topic, key=key.encode(), value=value,
                     on_delivery=lambda err, msg: err and errors.append(err))
    if producer.flush(30) != 0 or errors:
        sys.exit(f"not delivered: {errors}")
    print(int.from_bytes(value[1:5], "big"))


if __name__ == "__main__":
    main()
