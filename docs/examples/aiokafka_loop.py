"""Score a topic in your own aiokafka consumer loop, at least once: results are sent before the
input offsets are committed.

    python docs/examples/aiokafka_loop.py --bootstrap-servers localhost:9092 --registry artifacts
"""

import argparse
import asyncio
import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import streamscore


async def main(args: argparse.Namespace) -> None:
    model = streamscore.load_model(registry=args.registry)
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap_servers, acks="all")
    await consumer.start()
    await producer.start()
    seen = 0
    try:
        while args.max_messages is None or seen < args.max_messages:
            batches = await consumer.getmany(timeout_ms=500, max_records=256)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            out = await model.ascore(records)  # aiokafka's records as they are
            sent = [
                await producer.send(args.scored, json.dumps(r.to_json()).encode(), key=r.id.encode())
                for r in out.records
            ] + [
                await producer.send(
                    args.dlq, json.dumps(d.to_json()).encode(), key=(d.key or "").encode() or None
                )
                for d in out.dead_letters
            ]
            await asyncio.gather(*sent)
            await consumer.commit()
            seen += len(records)
            print(json.dumps({"scored": len(out.records), "dead_letters": len(out.dead_letters)}), flush=True)
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--registry", default="artifacts")
    parser.add_argument("--input", default="texts")
    parser.add_argument("--scored", default="texts.scored")
    parser.add_argument("--dlq", default="texts.dlq")
    parser.add_argument("--group-id", default="my-scoring-loop")
    parser.add_argument(
        "--max-messages", type=int, default=None, help="stop after this many (default: never)"
    )
    asyncio.run(main(parser.parse_args()))
