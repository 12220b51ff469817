"""One typed settings object for every command: defaults < environment < CLI flags.

Environment variables are ``STREAMSCORE_<FIELD>`` (upper case), plus the conventional
``KAFKA_BOOTSTRAP_SERVERS``.

>>> s = Settings.from_env({"STREAMSCORE_BATCH_SIZE": "32"}, batch_size=None, input_topic="in")
>>> (s.batch_size, s.input_topic, s.scored_topic)
(32, 'in', 'texts.scored')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_type_hints

from streamscore.models.backends import Backend
from streamscore.schemas.messages import MAX_MESSAGE_BYTES, MAX_TEXT_CHARS
from streamscore.streams.kafka.security import SaslMechanism, SecurityProtocol
from streamscore.streams.kafka.security import problems as security_problems

Guarantee = Literal["at_least_once", "exactly_once"]
LogLevel = Literal["debug", "info", "warning", "error"]

if TYPE_CHECKING:
    from streamscore.models.batch import BatchLimits


# Variables read when a field's own is unset: the conventional Kafka one, and old names.
OTHER_NAMES = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "encoder_threads": "STREAMSCORE_SCORING_THREADS",  # its name before 2026-12
}


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str | None = None  # None: an error, unless embedded_broker
    embedded_broker: bool = False  # no broker given: start a throwaway embedded one (--embedded)
    # Kafka security (streams/kafka/security.py). The password only from the environment
    # (STREAMSCORE_SASL_PASSWORD) or a file; it is left out of repr and logs.
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None  # None: the system's CAs
    ssl_certfile: Path | None = None  # client certificate (mutual TLS)
    ssl_keyfile: Path | None = None
    # More Kafka client properties, as kcat's -X takes them: "client.id=scorer,request.timeout.ms=40000"
    # (streams/kafka/security.py, CLIENT_PROPERTIES, says which; every client of a command gets them).
    kafka_properties: str | None = None
    registry: Path = Path("artifacts")
    model: str | None = None  # version or artifact dir; None: the registry's CURRENT
    device: str = "auto"  # auto | cpu | cuda
    embed_batch_size: int = 64
    backend: Backend = "torch"  # docs/performance.md
    trace_encoder: bool = True  # torch on CPU: run it as TorchScript, same vectors (models/traced.py)
    encoder_threads: int = (
        0  # forward passes the encoder runs at once, a thread each; 0: one per core (GPU: 1)
    )
    processes: int = 1  # worker processes in one group, each held to its own cores; 0: one per core
    embed_cache_size: int = 20_000  # embeddings kept in an in-process LRU; 0: no cache
    # redis://host:6379/0: a cache shared by workers; None: off. May hold a password, so it stays
    # out of repr and messages; give it through the environment, not a command-line flag.
    embed_cache_url: str | None = field(default=None, repr=False)
    embed_cache_ttl_s: int = 7 * 24 * 3600  # how long Redis keeps a shared embedding
    # Signs every shared embedding (HMAC-SHA256), so one that whoever may write to Redis put there
    # is not used; environment only, like the password. None: a checksum against corruption.
    embed_cache_secret: str | None = field(default=None, repr=False)
    cache_dir: Path = Path("~/.cache/streamscore")  # ONNX exports, the saved encoder trace
    input_topic: str = "texts"
    scored_topic: str = "texts.scored"
    dlq_topic: str = "texts.dlq"
    signals_topic: str = "drift.signals"  # one partition: one drift agent sees the whole stream
    alerts_topic: str = "drift.alerts"
    drift_state_topic: str = "drift.state"  # detector snapshots, so a restart resumes
    episodes_topic: str = "drift.episodes"  # compacted: each episode's growing explanation, by its id
    explain_texts: bool = True  # False: explanations carry keywords and counts, no customer text
    explain_text_chars: int = 200  # texts in explanations are cut to this
    drift_quiet: int = 1_000  # messages without an alarm that end a drift episode
    drift_cooldown: int = 500  # messages after an episode ends before the next may start
    partitions: int = 4  # for topics the worker creates
    replication_factor: int = 1  # for topics streamscore creates; 3 on a production cluster
    min_insync_replicas: int = 0  # for topics streamscore creates; 0: the broker's default
    group_id: str = "streamscore"
    # A worker that stops heartbeating loses its partitions after this long; the embedded broker
    # also waits half of it for members to join a new group (tests run with 10 s).
    session_timeout_s: float = 30.0
    connect_timeout_s: float = 30.0  # how long a worker waits at start for an unreachable broker
    batch_size: int = 64  # messages per micro-batch
    batch_wait_s: float = 0.05  # longest wait for a micro-batch to fill
    fetch_wait_ms: int = 50  # longest wait of a fetch (streams/kafka/faust_transport.py); Apache Kafka: 500
    max_text_chars: int = MAX_TEXT_CHARS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    score_retries: int = 2  # retries of a failing batch before its messages are dead-lettered
    top_k: int = 3
    processing_guarantee: Guarantee = "at_least_once"  # streams/kafka/guarantees.py
    commit_interval_s: float = 1.0  # how often confirmed offsets are committed (bounds redone work)
    shutdown_timeout_s: float = 30.0  # SIGTERM: longest wait for in-flight batches to finish
    reload_interval_s: float = 2.0  # how often the worker checks the registry's CURRENT
    log_level: LogLevel = "info"
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can reach it
    metrics_port: int = 9464  # taken: the next free port above it (printed at start); 0: none
    ui_host: str = "127.0.0.1"  # streamscore ui; 0.0.0.0 in a container
    ui_port: int = 8090  # 0: any free port (printed at start)
    ui_refresh_s: float = 5.0  # the page reloads itself this often

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from ``env`` (default ``os.environ``); overrides that are None are ignored."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"STREAMSCORE_{f.name.upper()}")
            if raw is None and f.name in OTHER_NAMES:
                raw = env.get(OTHER_NAMES[f.name])
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, raw, hints[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        rules = [
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.batch_wait_s > 0, "batch_wait_s must be positive"),
            # Kafka's default broker-side bounds (group.min/max.session.timeout.ms)
            (6.0 <= self.session_timeout_s <= 300.0, "session_timeout_s must be between 6 and 300 seconds"),
            (self.fetch_wait_ms >= 1, "fetch_wait_ms must be at least 1"),
            (self.connect_timeout_s > 0, "connect_timeout_s must be positive"),
            (self.max_text_chars >= 1, "max_text_chars must be at least 1"),
            (1 <= self.explain_text_chars <= 300, "explain_text_chars must be between 1 and 300"),
            (self.processes >= 0, "processes must be 0 (one per core) or more"),
            (self.encoder_threads >= 0, "encoder_threads must be 0 (one per core) or more"),
            (self.embed_cache_size >= 0, "embed_cache_size must be 0 (off) or more"),
            (self.embed_cache_ttl_s >= 1, "embed_cache_ttl_s must be at least 1"),
            (self.partitions >= 1, "partitions must be at least 1"),
            (0 <= self.ui_port <= 65535, "ui_port must be between 0 (any free port) and 65535"),
            (self.ui_refresh_s >= 1, "ui_refresh_s must be at least 1 second"),
            (self.replication_factor >= 1, "replication_factor must be at least 1"),
            (
                0 <= self.min_insync_replicas <= self.replication_factor,
                "min_insync_replicas must be between 0 (the broker's default) and replication_factor",
            ),
        ]
        problems = [message for ok, message in rules if not ok]
        hints = get_type_hints(Settings)
        for name in ("backend", "processing_guarantee", "log_level"):
            allowed = get_args(hints[name])
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.embed_cache_url and not self.embed_cache_url.startswith(("redis://", "rediss://", "unix://")):
            scheme = self.embed_cache_url.split(":", 1)[0]  # not the rest: it may hold a password
            problems.append(f"embed_cache_url must be a redis://, rediss:// or unix:// URL, not {scheme}:...")
        names = [
            self.input_topic,
            self.scored_topic,
            self.dlq_topic,
            self.signals_topic,
            self.alerts_topic,
            self.drift_state_topic,
            self.episodes_topic,
        ]
        if len(set(names)) < len(names):
            problems.append("input, scored, DLQ and drift topics must all differ")
        problems += security_problems(self)
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    @property
    def batch_limits(self) -> BatchLimits:
        from streamscore.models.batch import BatchLimits

        return BatchLimits(self.max_text_chars, self.max_message_bytes, self.score_retries)

    def embedder_options(self, cached: bool = True) -> dict[str, Any]:
        """``Embedder.load``'s options from these settings (models/embedder.py); ``cached=False``
        leaves out the embedding caches (the library, the bench's encoding figures).

        >>> Settings(embed_cache_size=5).embedder_options(cached=False)["cache_size"]
        0
        """
        return {
            "device": self.device,
            "batch_size": self.embed_batch_size,
            "backend": self.backend,
            "cache_size": self.embed_cache_size if cached else 0,
            "cache_dir": self.cache_dir,
            "encoder_threads": self.encoder_threads,
            "shared_cache_url": self.embed_cache_url if cached else None,
            "shared_cache_ttl_s": self.embed_cache_ttl_s,
            "shared_cache_secret": self.embed_cache_secret,
            "trace": self.trace_encoder,
        }

    def to_env(self) -> dict[str, str]:
        """The ``STREAMSCORE_*`` variables that rebuild these settings in a child process
        (``from_env`` reads them back); fields left unset (None) are left out.

        >>> env = Settings(batch_size=8, trace_encoder=False).to_env()
        >>> env["STREAMSCORE_BATCH_SIZE"], env["STREAMSCORE_TRACE_ENCODER"], "STREAMSCORE_MODEL" in env
        ('8', 'false', False)
        >>> Settings.from_env(env) == Settings(batch_size=8, trace_encoder=False)
        True
        """
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[f"STREAMSCORE_{f.name.upper()}"] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(name: str, raw: str, hint: Any) -> Any:
    text = str(hint)
    try:
        if hint is bool:
            return _boolean(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if "Path" in text:
            return Path(raw)
    except ValueError as exc:
        kind = "switch: use true or false (1/0, yes/no, on/off)" if hint is bool else hint.__name__
        raise ValueError(f"STREAMSCORE_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
