"""Fixtures: a real Kafka broker (env → testcontainers → KAFKA_HOME → embedded), a small real
model, a worker.

The broker is chosen as docs/design.md orders it: ``KAFKA_BOOTSTRAP_SERVERS`` when set, a
testcontainers Kafka when a Docker engine answers, Apache Kafka started from ``KAFKA_HOME`` (any
folder with Kafka's ``libs/``: an unpacked download) when set, else the embedded Tansu broker.
``STREAMSCORE_TEST_BROKER=embedded`` forces the embedded broker (.ci/run runs the suite on both).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Test processes share the cores (pytest -n, pytest_xdist_auto_num_workers below): each one's
# BLAS and torch thread pools take its share of them, or the pools of all of them contend (the
# fast suite took 2 min 26 s with a pool of 2 threads in each of 2 processes on 2 cores, 1 min
# 55 s with 1). Set before numpy loads; the workers the tests start inherit it (their encoder
# threads are set apart from it).
_TEST_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _TEST_PROCESSES > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _TEST_PROCESSES)))

import pytest  # noqa: E402

from streamscore.streams.kafka.apache import ApacheKafka  # noqa: E402
from streamscore.streams.kafka.broker import EmbeddedBroker, stop_process  # noqa: E402
from streamscore.training.data import SHIPPED_CLINC150  # noqa: E402
from streamscore.training.fit import TrainConfig  # noqa: E402

# Workers the tests start join a new group in 5 s instead of 15 on the embedded broker (it waits
# half the session timeout for members), and a killed one's partitions move sooner.
os.environ.setdefault("STREAMSCORE_SESSION_TIMEOUT_S", "10")

ROOT = Path(__file__).resolve().parent.parent
CLINC = SHIPPED_CLINC150
# Most tests need a model, not the best model: skip encoder fine-tuning to keep the suite fast.
FROZEN = TrainConfig(finetune_epochs=0, drift_ert=1_000)


def cli(
    *args: str,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """Run ``streamscore ARGS`` as a user would (``env``: its whole environment; ``stdin``: what it
    reads); with ``check``, it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "streamscore.streams.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
        input=stdin,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object a ``--json`` command prints as its last line."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def kafka_home() -> Path | None:
    """The Apache Kafka the tests start brokers from, unless the embedded broker is forced."""
    home = os.environ.get("KAFKA_HOME")
    if not home or os.environ.get("STREAMSCORE_TEST_BROKER") == "embedded":
        return None
    return Path(home)


def own_broker() -> EmbeddedBroker | ApacheKafka:
    """A broker for one test alone (one it may pause or stop): the same kind as the session's."""
    home = kafka_home()
    return ApacheKafka(home) if home is not None else EmbeddedBroker()


SESSION_BROKER: dict[str, str] = {}  # "kind": "apache-kafka" or "embedded", once started


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap servers of a real broker for the whole test session."""
    forced_embedded = os.environ.get("STREAMSCORE_TEST_BROKER") == "embedded"
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env and not forced_embedded:
        SESSION_BROKER["kind"] = "apache-kafka"  # assumed: whatever a user points the tests at
        yield env
        return
    if not forced_embedded and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        SESSION_BROKER["kind"] = "apache-kafka"
        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with own_broker() as broker:
        SESSION_BROKER["kind"] = "apache-kafka" if isinstance(broker, ApacheKafka) else "embedded"
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def broker_kind(kafka: str) -> str:
    """What the session's broker is: ``apache-kafka`` or ``embedded`` (Tansu)."""
    return SESSION_BROKER["kind"]


@pytest.fixture(scope="session")
def transactions(kafka: str) -> bool:
    """Whether the session's broker runs Kafka transactions (the embedded one does not)."""
    from streamscore.streams.kafka.guarantees import transactions_refused

    return asyncio.run(transactions_refused(kafka)) is None


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject.toml): a test process per core, and one more (at most 8) when
    integration tests run. They wait on brokers, group joins and faults a good part of their
    time, which the extra process fills (make test on 2 cores: 14 min 11 s with 2 processes,
    12 min 3 s with 3); the fast part only computes (1 min 48 s with 2, 2 min 5 s with 3)."""
    cores = len(os.sched_getaffinity(0))
    if "not integration" in (config.option.markexpr or ""):
        return cores
    return min(cores + 1, 8)


# The longest files, started first so that the test processes (pytest -n auto, file by file)
# finish at about the same time instead of one waiting on a long file picked up last.
LONGEST_FIRST = (
    "test_reliability.py",
    "test_bench.py",
    "test_exactly_once.py",
    "test_demo.py",
    "test_cluster.py",
    "test_observability.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that talks to a broker is an integration test (``-m "not integration"``: the
    fast suite); those that start a broker of their own carry the mark themselves."""
    for item in items:
        if {"kafka", "worker"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def debian_server(binary: str, package: str, what: str) -> str:
    """Path of a server the tests run for real (``make test`` installs its Debian package)."""
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if not found:
        pytest.fail(
            f"{what} is not installed: `make test` installs the Debian package "
            f"(apt-get install --no-install-recommends {package})"
        )
    return found


def small_clinc_rows(n_labels: int = 12, seed: int = 0) -> list[dict]:
    """A real subset of CLINC150: ``n_labels`` intents (all their rows) plus out-of-scope rows."""
    rows = [json.loads(line) for line in open(CLINC, encoding="utf-8")]
    labels = sorted({r["label"] for r in rows if r["label"] != "oos"})
    keep = set(random.Random(seed).sample(labels, n_labels))
    return [r for r in rows if r["label"] in keep or r["label"] == "oos"]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.jsonl"
    with open(path, "w") as f:
        for r in small_clinc_rows():
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture(scope="session")
def embedder():
    from streamscore.models.embedder import Embedder

    # Tests of one process share it, and many embed the same CLINC150 rows: a cache hit returns
    # exactly what encoding would (tests/test_embedder.py), so each text is encoded once.
    return Embedder.load(cache_size=200_000)


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory, small_data: Path, embedder) -> Path:
    """A registry with one promoted model trained on the small subset: trained once a run, by
    the first test process that asks, while the others wait (pytest -n) and then share it. No
    test writes into it (those that change a registry copy it), and a worker keeps its state in
    a folder of its own group's."""
    import fcntl

    from streamscore.models.registry import Registry
    from streamscore.training.fit import train

    run = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run = run.parent  # this run's folder, which holds every test process's own
    root, done = run / "trained-registry", run / "trained-registry.done"
    with open(run / "trained-registry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a process that failed half-way
            train(small_data, Registry(root), FROZEN, quiet=True, embedder=embedder)
            done.touch()
    return root


@dataclass
class WorkerHandle:
    process: subprocess.Popen
    topics: dict[str, str]
    bootstrap: str
    log_path: Path
    tag: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    bootstrap: str,
    registry: Path,
    log_dir: Path,
    tag: str | None = None,
    wrap: tuple[str, ...] = (),
    **extra: str,
) -> WorkerHandle:
    """A real ``streamscore worker`` process on fresh topics of its own (or those of ``tag``);
    ``wrap`` runs it through a prefix (a network namespace's ``ip netns exec``)."""
    tag = tag or uuid.uuid4().hex[:8]
    topics = {
        "input": f"texts-{tag}",
        "scored": f"texts.scored-{tag}",
        "dlq": f"texts.dlq-{tag}",
        "signals": f"drift.signals-{tag}",
        "alerts": f"drift.alerts-{tag}",
        "state": f"drift.state-{tag}",
        "episodes": f"drift.episodes-{tag}",
    }
    args = [
        sys.executable,
        "-m",
        "streamscore.streams.cli",
        "worker",
        "--bootstrap-servers",
        bootstrap,
        "--registry",
        str(registry),
        "--input-topic",
        topics["input"],
        "--scored-topic",
        topics["scored"],
        "--dlq-topic",
        topics["dlq"],
        "--signals-topic",
        topics["signals"],
        "--alerts-topic",
        topics["alerts"],
        "--drift-state-topic",
        topics["state"],
        "--episodes-topic",
        topics["episodes"],
        "--group-id",
        f"streamscore-test-{tag}",
        "--partitions",
        "3",
    ]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    log_path = log_dir / f"worker-{tag}-{uuid.uuid4().hex[:4]}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([*wrap, *args], stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    return WorkerHandle(proc, topics, bootstrap, log_path, tag)


def stop_worker(handle: WorkerHandle) -> None:
    stop_process(handle.process, timeout_s=30)


@pytest.fixture(scope="module")
def worker(
    kafka: str, trained_registry: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerHandle]:
    handle = start_worker(kafka, trained_registry, tmp_path_factory.mktemp("worker"), max_text_chars="500")
    time.sleep(1)
    if handle.process.poll() is not None:
        pytest.fail("worker exited at start:\n" + handle.log())
    yield handle
    alive = handle.process.poll() is None
    stop_worker(handle)
    assert alive, "worker died during the tests:\n" + handle.log()
