"""Throughput of microbus against bare boto3 on the same embedded moto server.

Both sides do the same work: publish N messages to an SNS topic (batches of 10), then receive them
from the subscribed queue and delete them. The bare side is the loop a team would write by hand
(receive 10, json-decode, delete_message_batch); microbus adds schema validation, decoding,
dispatch, batched acks and worker threads. moto's cost grows with queue depth, so N stays small.

    .venv/bin/python bench/throughput.py [N] [ROUNDS]
    MICROBUS_BENCH_ENDPOINT_URL=$(localstack/localstack.sh endpoint) .venv/bin/python bench/throughput.py 2000

With MICROBUS_BENCH_ENDPOINT_URL the same run goes against that emulator (e.g. LocalStack, whose cost
does not grow with queue depth) instead of a fresh embedded moto server per round.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import uuid

from microbus.reference.schemas import OrderPlaced

from microbus import SNSProducer, SQSConsumer, TopicArns, Worker
from microbus.consume.dispatch import SQSMessageDispatcher
from microbus.consume.handlers import HandlerRegistry
from microbus.testing import wait_for
from microbus.testing.emulator import EmbeddedEmulator, Endpoint
from microbus.topology import Queue, Subscription, Topology, apply_topology
from microbus.wire.schemas import SchemaRegistry
from microbus.wire.transport import SNSTransport, SQSTransport


def make_pair(settings):
    name = f"bench-{uuid.uuid4().hex[:8]}"
    topology = Topology(topics=(name,), queues=(Queue(name=name, subscriptions=(Subscription(topic=name),)),))
    applied = apply_topology(topology, sns=settings.client("sns"), sqs=settings.client("sqs"))
    return applied.topic_arns[name], applied.queue_urls[name]


def bare(settings, n):
    sns, sqs = settings.client("sns"), settings.client("sqs")
    topic, url = make_pair(settings)
    started = time.monotonic()
    for start in range(0, n, 10):
        entries = [
            {"Id": str(i), "Message": json.dumps({"mediaType": OrderPlaced.MEDIA_TYPE, "order_id": str(start + i)})}
            for i in range(min(10, n - start))
        ]
        sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
    published = time.monotonic()
    seen = 0
    while seen < n:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            json.loads(json.loads(message["Body"])["Message"])
        if messages:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        seen += len(messages)
    return published - started, time.monotonic() - published


def with_microbus(settings, n, concurrency):
    topic, url = make_pair(settings)
    producer = SNSProducer(
        transport=SNSTransport(client=settings.client("sns")),
        schema_registry=SchemaRegistry(),
        topic_arns=TopicArns(default=topic),
    )
    started = time.monotonic()
    producer.produce_batch(OrderPlaced.MEDIA_TYPE, [{"order_id": str(i)} for i in range(n)])
    published = time.monotonic()
    consumer = SQSConsumer(
        transport=SQSTransport(client=settings.client("sqs"), queue_url=url),
        schema_registry=SchemaRegistry(),
        wait_seconds=1,
    )
    worker = Worker(
        consumer=consumer,
        dispatcher=SQSMessageDispatcher(handler_registry=HandlerRegistry({OrderPlaced.MEDIA_TYPE: lambda c: None})),
        concurrency=concurrency,
    )
    worker.start()
    wait_for(lambda: worker.stats.handled >= n, timeout_s=300)
    consumed = time.monotonic()
    worker.stop()
    worker.join()
    return published - started, consumed - published


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    url = os.environ.get("MICROBUS_BENCH_ENDPOINT_URL")
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rounds):  # a fresh emulator per round; the median of the rounds is printed
        with contextlib.nullcontext(Endpoint(url)) if url else EmbeddedEmulator() as emulator:
            settings = emulator.settings()
            runs.setdefault("bare boto3", []).append(bare(settings, n))
            for concurrency in (1, 4):
                runs.setdefault(f"microbus concurrency={concurrency}", []).append(
                    with_microbus(settings, n, concurrency)
                )
    where = url or "embedded moto"
    print(f"{n} messages x {rounds} rounds (median), {where}, one SNS topic -> one SQS queue (enveloped)")
    print(f"{'':28} {'publish msg/s':>14} {'consume msg/s':>14}")
    for label, results in runs.items():
        publish_s = statistics.median(r[0] for r in results)
        consume_s = statistics.median(r[1] for r in results)
        print(f"{label:28} {n / publish_s:14.0f} {n / consume_s:14.0f}")


if __name__ == "__main__":
    main()
