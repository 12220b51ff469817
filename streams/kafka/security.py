"""How every streamscore Kafka client authenticates and encrypts: SASL (PLAIN, SCRAM) and TLS.

One place turns the settings into client options, so the worker, its drift and broker watchers,
topic creation and the CLI tools all connect the same way. Secrets come from the environment
(``STREAMSCORE_SASL_PASSWORD``) or a file (``sasl_password_file``), never from a command-line
flag (flags show in ``ps``); the password is kept out of ``repr`` and never logged.

>>> from streamscore.streams.settings import Settings
>>> s = Settings.from_env({"STREAMSCORE_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
...     "STREAMSCORE_SASL_MECHANISM": "SCRAM-SHA-256", "STREAMSCORE_SASL_USERNAME": "scorer",
...     "STREAMSCORE_SASL_PASSWORD": "s3cret"})
>>> opts = client_options(s)
>>> opts["security_protocol"], opts["sasl_mechanism"], opts["sasl_plain_username"]
('SASL_PLAINTEXT', 'SCRAM-SHA-256', 'scorer')
>>> "s3cret" in repr(s)
False
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # settings.py reads this module's types and checks: the import goes one way
    from streamscore.streams.settings import Settings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)


CLIENT_PROPERTIES = {
    # Kafka's name -> (aiokafka's keyword, Faust's setting and its unit divisor, or None)
    "client.id": ("client_id", ("broker_client_id", None)),
    "request.timeout.ms": ("request_timeout_ms", ("broker_request_timeout", 1000)),
    "metadata.max.age.ms": ("metadata_max_age_ms", None),
    "connections.max.idle.ms": ("connections_max_idle_ms", None),
    "retry.backoff.ms": ("retry_backoff_ms", None),
    "sasl.kerberos.service.name": ("sasl_kerberos_service_name", None),
    "sasl.kerberos.domain.name": ("sasl_kerberos_domain_name", None),
}
"""The Kafka client properties ``kafka_properties`` may set: those every client streamscore runs
(producer, consumer, admin) takes. Security has settings of its own."""


def kafka_properties(text: str | None) -> dict[str, str | int]:
    """``kafka_properties`` as Kafka names and values; raise ValueError naming a bad one.

    >>> kafka_properties("client.id=scorer-1, request.timeout.ms=40000")
    {'client.id': 'scorer-1', 'request.timeout.ms': 40000}
    >>> kafka_properties("linger.ms=5")
    Traceback (most recent call last):
    ...
    ValueError: kafka_properties: 'linger.ms' is not one streamscore passes on; allowed: client.id, request.timeout.ms, metadata.max.age.ms, connections.max.idle.ms, retry.backoff.ms, sasl.kerberos.service.name, sasl.kerberos.domain.name
    """
    out: dict[str, str | int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ValueError(f"kafka_properties: {item.strip()!r} is not NAME=VALUE")
        if key not in CLIENT_PROPERTIES:
            allowed = ", ".join(CLIENT_PROPERTIES)
            raise ValueError(
                f"kafka_properties: {key!r} is not one streamscore passes on; allowed: {allowed}"
            )
        if key.endswith(".ms"):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"kafka_properties: {key}={value!r} must be a whole number of milliseconds")
            out[key] = int(value)
        else:
            out[key] = value
    return out


def faust_properties(settings: Settings) -> dict[str, Any]:
    """``kafka_properties`` as Faust app settings (those Faust has a setting for)."""
    out: dict[str, Any] = {}
    for key, value in kafka_properties(settings.kafka_properties).items():
        faust_name = CLIENT_PROPERTIES[key][1]
        if faust_name is not None:
            name, divisor = faust_name
            out[name] = int(value) / divisor if divisor else value
    return out


def problems(settings: Settings) -> list[str]:
    """What is wrong with the security and client settings, in words a user can act on."""
    out = []
    try:
        kafka_properties(settings.kafka_properties)
    except ValueError as exc:
        out.append(str(exc))
    if settings.security_protocol not in PROTOCOLS:
        out.append(
            f"security_protocol must be one of {', '.join(PROTOCOLS)}, not {settings.security_protocol!r}"
        )
    if settings.sasl_mechanism not in MECHANISMS:
        out.append(f"sasl_mechanism must be one of {', '.join(MECHANISMS)}, not {settings.sasl_mechanism!r}")
    if settings.security_protocol.startswith("SASL_"):
        if not settings.sasl_username:
            out.append(f"{settings.security_protocol} needs sasl_username (STREAMSCORE_SASL_USERNAME)")
        if not settings.sasl_password and not settings.sasl_password_file:
            out.append(
                f"{settings.security_protocol} needs a password: set STREAMSCORE_SASL_PASSWORD or "
                "sasl_password_file (a file holding only the password)"
            )
    files = [("sasl_password_file", settings.sasl_password_file)] + [
        (name, getattr(settings, name)) for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    ]
    for name, path in files:
        if path is not None and not path.expanduser().is_file():
            out.append(f"{name} {str(path)!r} is not a readable file")
    return out


def connection_advice(protocol: str) -> str:
    """What to check when no connection to the brokers could be made with ``protocol``."""
    if protocol == "PLAINTEXT":
        return (
            "is the broker running there? (`streamscore broker` starts one); if it requires TLS or "
            "SASL, set security_protocol (STREAMSCORE_SECURITY_PROTOCOL)"
        )
    advice = [f"is a broker running there, on a listener that speaks {protocol}?"]
    if protocol.endswith("SSL"):
        advice.append(
            "ssl_cafile must hold the CA that signed the broker's certificate (else the system CAs "
            "are used), and a broker that asks for client certificates needs ssl_certfile and ssl_keyfile."
        )
    if protocol.startswith("SASL_"):
        advice.append("Check sasl_mechanism, sasl_username and the password.")
    return " ".join(advice)


def unreachable(bootstrap_servers: str, options: dict[str, Any] | None, cause: object = None) -> str:
    """The error for no connection to ``bootstrap_servers`` with client ``options``."""
    protocol = (options or {}).get("security_protocol", "PLAINTEXT")
    because = f" ({cause})" if cause is not None else ""
    return (
        f"cannot reach Kafka at {bootstrap_servers} over {protocol}{because}: {connection_advice(protocol)}"
    )


def failure_message(exc: BaseException, settings: Settings) -> str | None:
    """What to tell a user when ``exc`` is a failure to connect or log in to Kafka; else None.

    >>> from streamscore.streams.settings import Settings
    >>> from aiokafka.errors import KafkaConnectionError
    >>> failure_message(KafkaConnectionError("Unable to bootstrap"), Settings.from_env({}))[:52]
    'KafkaConnectionError: Unable to bootstrap: is the br'
    >>> failure_message(ValueError("bad row"), Settings.from_env({})) is None
    True
    """
    from aiokafka import errors

    protocol, mechanism = settings.security_protocol, settings.sasl_mechanism
    refused = isinstance(exc, errors.SaslAuthenticationFailed | errors.AuthenticationFailedError)
    refused |= isinstance(exc, errors.KafkaConnectionError) and REFUSED_LOGINS.seen
    if isinstance(exc, errors.KafkaConnectionError) and not refused:
        return f"{exc}: {connection_advice(protocol)}"
    if refused or _scram_login_refused(exc):
        return (
            f"the broker refused the {mechanism} login of user {settings.sasl_username!r}: check "
            "sasl_username, the password (STREAMSCORE_SASL_PASSWORD or sasl_password_file) and that "
            f"the user has {mechanism} credentials on the broker"
        )
    if isinstance(exc, errors.UnsupportedSaslMechanismError):
        return f"{exc}: set sasl_mechanism to one the broker offers (it names them above)"
    return None


class _RefusedLogins(logging.Handler):
    """Apache Kafka refuses a bad SASL login with ``SaslAuthenticationFailed``, but aiokafka's
    bootstrap only logs it (the error is an argument of its log record) and then raises a plain
    ``KafkaConnectionError``; this handler on aiokafka's logger remembers that a login was refused."""

    seen = False

    def emit(self, record: logging.LogRecord) -> None:
        from aiokafka import errors

        args = record.args if isinstance(record.args, tuple) else ()
        if any(
            isinstance(a, errors.SaslAuthenticationFailed | errors.AuthenticationFailedError) for a in args
        ):
            self.seen = True


REFUSED_LOGINS = _RefusedLogins(level=logging.ERROR)  # the CLI attaches it to aiokafka's logger


def _scram_login_refused(exc: BaseException) -> bool:
    """aiokafka 0.14 reads a SCRAM server-final message of ``e=<reason>`` (the broker refused
    the login) as if it held the server's signature ``v=``, and fails with ``KeyError('v')``."""
    if not isinstance(exc, KeyError) or exc.args != ("v",):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name == "process_server_final_message"


def sasl_password(settings: Settings) -> str | None:
    if settings.sasl_password:
        return settings.sasl_password
    if settings.sasl_password_file:
        return settings.sasl_password_file.expanduser().read_text(encoding="utf-8").strip()
    return None


def ssl_context(settings: Settings) -> Any:
    """A TLS context (system CAs unless ``ssl_cafile``; a client certificate if given), or None."""
    if not settings.security_protocol.endswith("SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    def path(p: Any) -> str | None:
        return str(p.expanduser()) if p else None

    return create_ssl_context(
        cafile=path(settings.ssl_cafile),
        certfile=path(settings.ssl_certfile),
        keyfile=path(settings.ssl_keyfile),
    )


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer, admin and plain clients."""
    extra = {CLIENT_PROPERTIES[k][0]: v for k, v in kafka_properties(settings.kafka_properties).items()}
    if settings.security_protocol == "PLAINTEXT":
        return extra
    opts: dict[str, Any] = {**extra, "security_protocol": settings.security_protocol}
    context = ssl_context(settings)
    if context is not None:
        opts["ssl_context"] = context
    if settings.security_protocol.startswith("SASL_"):
        opts["sasl_mechanism"] = settings.sasl_mechanism
        opts["sasl_plain_username"] = settings.sasl_username
        opts["sasl_plain_password"] = sasl_password(settings)
    return opts


def faust_credentials(settings: Settings) -> Any:
    """The same settings as Faust's ``broker_credentials`` (None for PLAINTEXT)."""
    import faust

    if settings.security_protocol == "PLAINTEXT":
        return None
    if settings.security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=sasl_password(settings),
        ssl_context=ssl_context(settings),
        mechanism=settings.sasl_mechanism,
    )
