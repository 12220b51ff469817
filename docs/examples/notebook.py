"""Score a few texts with a trained model, as in a notebook: `python docs/examples/notebook.py [REGISTRY]`.

Train one first (`streamscore train --data datasets/clinc150/clinc150_full.jsonl`); the registry
defaults to `artifacts`, as for the CLI.
"""

import json
import sys

import streamscore

registry = sys.argv[1] if len(sys.argv) > 1 else "artifacts"

for row in streamscore.list_models(registry):
    print("model", row["version"], "(current)" if row["current"] else "", row["val"])

model = streamscore.load_model(registry=registry)  # CURRENT; or a version: load_model("v1", registry)
print("labels:", len(model.labels), "OOD threshold:", round(model.ood_threshold, 3))

out = model.score(
    [
        "my card was declined at the store",
        {"id": "t2", "text": "what is the capital of mongolia", "meta": {"shop": 7}},
        "",  # not scored: it comes back as a dead letter with a reason
    ]
)
for record in out.records:
    streamscore.validate("texts.scored", record.to_json())  # the same record the worker writes
    print(json.dumps({k: getattr(record, k) for k in ("id", "label", "confidence", "ood_score", "is_ood")}))
for dead in out.dead_letters:
    print(json.dumps({"dead_letter": dead.reason, "detail": dead.detail}))

one = model.score_one("i lost my card")  # one text alone: a ScoredText, or a DeadLetterRecord
print(json.dumps({"one": one.label if isinstance(one, streamscore.ScoredText) else one.reason}))
