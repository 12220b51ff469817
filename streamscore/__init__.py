"""streamscore as a library: load a trained model and score texts or Kafka messages into the very
records the worker writes, read the model registry, check a message against its topic's schema.

>>> import streamscore
>>> sorted(streamscore.SCHEMAS)[:2], callable(streamscore.load_model)
(['drift.alerts', 'drift.episodes'], True)

A session, as in a notebook (``docs/examples/notebook.py``)::

    model = streamscore.load_model(registry="artifacts")       # the registry's CURRENT model
    out = model.score(["my card was declined", {"id": "t2", "text": "where is my parcel"}])
    out.records[0].label, out.records[0].is_ood

In a consumer loop, pass aiokafka's records as they come (``docs/examples/aiokafka_loop.py``);
in a Faust agent, ``await model.ascore(values)`` (``docs/examples/faust_agent.py``).
"""

from streamscore.model import Model, list_models, load_model
from streamscore.models.registry import Registry
from streamscore.results import DeadLetterRecord, LabelProb, Result, Scored, ScoredText
from streamscore.schemas.contract import SCHEMAS, SchemaError, validate
from streamscore.schemas.messages import Origin, parse_input

__all__ = [
    "SCHEMAS",
    "DeadLetterRecord",
    "LabelProb",
    "Model",
    "Origin",
    "Registry",
    "Result",
    "SchemaError",
    "Scored",
    "ScoredText",
    "list_models",
    "load_model",
    "parse_input",
    "validate",
]
