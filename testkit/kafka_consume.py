"""Reads a Kafka topic from its beginning with kafka-python (a client independent of the one
event_bus produces with) and prints one JSON line per message: partition, offset, key, headers,
value. Stops when it has read the expected number of messages or at the deadline.

usage: kafka_consume.py BOOTSTRAP TOPIC EXPECTED TIMEOUT_SECONDS
"""
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition

bootstrap, topic, expected, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         auto_offset_reset="earliest", client_id="event_bus-test-consumer")
partitions = None
while not partitions and time.monotonic() < deadline:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        time.sleep(0.2)
if not partitions:
    sys.exit(f"topic {topic} not found")
tps = [TopicPartition(topic, p) for p in sorted(partitions)]
consumer.assign(tps)
consumer.seek_to_beginning(*tps)
seen = 0
while seen < expected and time.monotonic() < deadline:
    for tp, messages in consumer.poll(timeout_ms=500, max_records=5000).items():
        for m in messages:
            print(json.dumps({
                "partition": m.partition,
                "offset": m.offset,
                "key": m.key.decode() if m.key is not None else None,
                "headers": {k: v.decode() for k, v in (m.headers or [])},
                "value": m.value.decode() if m.value is not None else None,
            }))
            seen += 1
consumer.close()
