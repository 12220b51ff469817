"""Score texts inside your own Faust app: one agent, batches of up to 64.

    STREAMSCORE_REGISTRY=artifacts KAFKA=kafka://localhost:9092 \
        python docs/examples/faust_agent.py worker -l info
"""

import json
import os

import faust

import streamscore

app = faust.App(
    os.environ.get("APP_ID", "my-scoring-app"),
    broker=os.environ.get("KAFKA", "kafka://localhost:9092"),
    value_serializer="raw",
    topic_disable_leader=True,
)
texts = app.topic(os.environ.get("INPUT_TOPIC", "texts"), value_serializer="raw")
scored = app.topic(os.environ.get("SCORED_TOPIC", "texts.scored"), value_serializer="raw")
dead = app.topic(os.environ.get("DLQ_TOPIC", "texts.dlq"), value_serializer="raw")
model = streamscore.load_model(registry=os.environ.get("STREAMSCORE_REGISTRY", "artifacts"))


@app.agent(texts)
async def score(stream):
    async for events in stream.take_events(64, within=0.5):
        out = await model.ascore(event.message for event in events)
        for record in out.records:
            await scored.send(key=record.id.encode(), value=json.dumps(record.to_json()).encode())
        for letter in out.dead_letters:
            await dead.send(
                key=(letter.key or "").encode() or None, value=json.dumps(letter.to_json()).encode()
            )


if __name__ == "__main__":
    app.main()
