from pathlib import Path

import pytest

from streamscore.streams.settings import Settings


def test_env_then_overrides():
    env = {"KAFKA_BOOTSTRAP_SERVERS": "h:1", "STREAMSCORE_BATCH_WAIT_S": "0.2", "STREAMSCORE_REGISTRY": "/r"}
    s = Settings.from_env(env, batch_wait_s=None, group_id="g")
    assert (s.bootstrap_servers, s.batch_wait_s, s.registry, s.group_id) == ("h:1", 0.2, Path("/r"), "g")
    assert (
        Settings.from_env(
            {"STREAMSCORE_BOOTSTRAP_SERVERS": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2"}
        ).bootstrap_servers
        == "a:1"
    )


def test_switches_read_the_usual_words():
    read = [
        Settings.from_env({"STREAMSCORE_TRACE_ENCODER": w}).trace_encoder
        for w in ("off", "False", "0", "yes", "1")
    ]
    assert read == [False, False, False, True, True]
    assert Settings.from_env({}).trace_encoder is True
    with pytest.raises(
        ValueError, match="STREAMSCORE_TRACE_ENCODER='maybe' is not a valid switch: use true or false"
    ):
        Settings.from_env({"STREAMSCORE_TRACE_ENCODER": "maybe"})


def test_bad_values_are_explained():
    with pytest.raises(ValueError, match="STREAMSCORE_BATCH_SIZE"):
        Settings.from_env({"STREAMSCORE_BATCH_SIZE": "many"})
    with pytest.raises(ValueError, match="topics must all differ"):
        Settings.from_env({}, scored_topic="texts")
    with pytest.raises(ValueError, match="batch_size"):
        Settings.from_env({}, batch_size=0)


def test_a_redis_password_stays_out_of_repr_and_errors():
    s = Settings.from_env({"STREAMSCORE_EMBED_CACHE_URL": "redis://:s3cret@cache:6379/0"})
    assert s.embed_cache_url == "redis://:s3cret@cache:6379/0" and "s3cret" not in repr(s)
    with pytest.raises(ValueError, match="embed_cache_url must be a redis://") as err:
        Settings.from_env({"STREAMSCORE_EMBED_CACHE_URL": "http://:s3cret@cache:6379"})
    assert "s3cret" not in str(err.value)


def test_the_fetch_wait_reaches_the_kafka_consumer():
    import asyncio

    from streamscore.streams.kafka import internals
    from streamscore.streams.kafka.faust_transport import StreamApp

    async def fetch_wait_of(settings: Settings) -> int:
        app = StreamApp(
            "t", broker="kafka://127.0.0.1:1", fetch_wait_ms=settings.fetch_wait_ms, web_enabled=False
        )
        # The consumer Faust builds, built as Faust builds it (its private hooks, test only).
        thread = app.consumer._new_consumer_thread()  # noqa: SLF001
        consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001
        try:
            return internals.fetch_wait(consumer)
        finally:
            await consumer.stop()  # never started: closes its client

    assert asyncio.run(fetch_wait_of(Settings.from_env({"STREAMSCORE_FETCH_WAIT_MS": "7"}))) == 7
    assert asyncio.run(fetch_wait_of(Settings())) == 50
    with pytest.raises(ValueError, match="fetch_wait_ms"):
        Settings.from_env({}, fetch_wait_ms=0)


def test_the_encoder_threads_setting_keeps_its_old_name_working():
    assert Settings.from_env({"STREAMSCORE_SCORING_THREADS": "3"}).encoder_threads == 3
    both = {"STREAMSCORE_SCORING_THREADS": "3", "STREAMSCORE_ENCODER_THREADS": "2"}
    assert Settings.from_env(both).encoder_threads == 2


def test_choices_come_from_the_typed_fields():
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, onnx-int8, not 'tf'"):
        Settings.from_env({"STREAMSCORE_BACKEND": "tf"})
    with pytest.raises(ValueError, match="processing_guarantee must be one of at_least_once, exactly_once"):
        Settings.from_env({}, processing_guarantee="twice")
    with pytest.raises(ValueError, match="security_protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT"):
        Settings.from_env({"STREAMSCORE_SECURITY_PROTOCOL": "TLS"})


def test_replication_settings_are_checked():
    assert (
        Settings.from_env(
            {"STREAMSCORE_REPLICATION_FACTOR": "3", "STREAMSCORE_MIN_INSYNC_REPLICAS": "2"}
        ).min_insync_replicas
        == 2
    )
    with pytest.raises(ValueError, match="min_insync_replicas must be between 0"):
        Settings.from_env({"STREAMSCORE_MIN_INSYNC_REPLICAS": "2"})
    with pytest.raises(ValueError, match="replication_factor must be at least 1"):
        Settings.from_env({"STREAMSCORE_REPLICATION_FACTOR": "0"})
