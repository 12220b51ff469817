"""The private parts of aiokafka and Faust that streams/kafka/internals.py relies on are still there."""

import pytest

from streamscore.streams.kafka import internals


def test_the_installed_aiokafka_and_faust_have_what_the_adapter_uses():
    internals.check()


def test_a_renamed_internal_is_named_in_a_clear_error(monkeypatch):
    from faust.transport.drivers.aiokafka import Producer

    monkeypatch.delattr(Producer, "_ensure_producer")
    with pytest.raises(RuntimeError, match=r"faust Producer\._ensure_producer changed"):
        internals.check()
