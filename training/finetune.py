"""Fine-tuning the sentence encoder on the training labels before fitting the head.

A cosine classifier (scaled cosine similarity to one learned vector per label) is trained
jointly with the encoder using cross-entropy with label smoothing. It pulls texts of one
label together and apart from the others, which is what both the head and the OOD score feed
on. Three things keep it within a slow machine's budget (docs/models.md, Training time):
texts are cut at a high quantile of the training texts' token lengths instead of the model's
limit, each batch holds texts of similar length (little padding), and, given validation texts,
training stops once the validation accuracy stops improving and keeps the best weights.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamscore.models.embedder import Embedder


@dataclass
class FinetuneConfig:
    epochs: float = 1.0  # the most; early stopping may end sooner
    lr: float = 5e-5  # encoder
    head_lr: float = 5e-3  # label vectors of the cosine classifier
    batch_size: int = 32
    scale: float = 30.0  # cosine → logit scale
    label_smoothing: float = 0.1
    warmup: float = 0.1  # share of steps with a rising learning rate
    length_quantile: float = 0.99  # texts are cut at this quantile of the training token lengths
    checks_per_epoch: int = 2  # validation checks for early stopping
    patience: int = 2  # checks without a better validation accuracy before stopping
    min_gain: float = 0.002  # a smaller rise in validation accuracy is no improvement
    seed: int = 0


def sequence_length(lengths: list[int], quantile: float, limit: int) -> int:
    """Token length to cut training texts at: ``quantile`` of ``lengths``, rounded up to 8.

    >>> sequence_length([10] * 197 + [40, 40, 300], 0.99, 256)
    40
    >>> sequence_length([300] * 10, 0.99, 256)
    256
    """
    if not lengths:
        return limit
    cut = int(np.ceil(np.quantile(np.asarray(lengths), quantile, method="higher")))
    return int(min(limit, max(16, -(-cut // 8) * 8)))


def length_batches(lengths: list[int], batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    """``steps`` batches of indices: shuffled epochs, each cut into pools of 50 batches whose texts
    are sorted by length, so a batch pads little; the batches' order is shuffled again.

    >>> batches = length_batches([5, 50, 6, 51, 7, 52, 8, 53], 2, 4, random.Random(0))
    >>> sorted(i for b in batches for i in b)
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> all(abs([5, 50, 6, 51, 7, 52, 8, 53][b[0]] - [5, 50, 6, 51, 7, 52, 8, 53][b[1]]) < 10 for b in batches)
    True
    """
    pool = 50 * batch_size
    batches: list[list[int]] = []
    while lengths and len(batches) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        epoch = []
        for start in range(0, len(order), pool):
            part = sorted(order[start : start + pool], key=lambda i: lengths[i])
            epoch += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(epoch)
        batches += [b for b in epoch if len(b) == batch_size or len(lengths) < batch_size]
    return batches[:steps]


def finetune_encoder(
    embedder: Embedder,
    texts: list[str],
    labels: list[str],
    cfg: FinetuneConfig,
    progress: bool = False,
    val_texts: list[str] | None = None,
    val_labels: list[str] | None = None,
) -> dict[str, Any]:
    """Train ``embedder.model`` in place; returns what happened, for the manifest."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    # Vectors cached before training are stale once the weights move: forget them.
    embedder.cache, embedder.shared = None, None
    model = embedder.model
    label_vectors = torch.nn.Parameter(torch.randn(len(names), embedder.dim, device=model.device) * 0.01)
    opt = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": cfg.lr}, {"params": [label_vectors], "lr": cfg.head_lr}],
        weight_decay=0.01,
    )
    steps = max(1, int(len(texts) * cfg.epochs / cfg.batch_size))
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / steps)
    )
    full_length = int(model.max_seq_length)
    lengths = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"]]
    cut = sequence_length(lengths, cfg.length_quantile, full_length)
    batches = length_batches([min(n, cut) for n in lengths], cfg.batch_size, steps, rng)
    val = [(t, index[y]) for t, y in zip(val_texts or [], val_labels or [], strict=True) if y in index]
    every = max(1, len(texts) // (cfg.batch_size * max(1, cfg.checks_per_epoch))) if val else 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="fine-tuning encoder", file=sys.stderr)
    losses: list[float] = []
    checks: list[dict[str, float]] = []
    best: dict[str, Any] | None = None
    model.max_seq_length = cut
    model.train()
    try:
        for step, batch in enumerate(batches):
            features = model.preprocess([texts[i] for i in batch])
            features = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in features.items()}
            emb = F.normalize(model(features)["sentence_embedding"], dim=1)
            logits = cfg.scale * emb @ F.normalize(label_vectors, dim=1).T
            target = torch.tensor([index[labels[i]] for i in batch], device=model.device)
            loss = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.item()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if every and ((step + 1) % every == 0 or step + 1 == steps):
                acc = _val_accuracy(model, label_vectors, val, cfg.batch_size * 4)
                checks.append(
                    {"epoch": round((step + 1) * cfg.batch_size / len(texts), 3), "val_accuracy": acc}
                )
                if best is None or acc >= best["accuracy"] + cfg.min_gain:
                    best = {"accuracy": acc, "check": len(checks) - 1, "state": _copy_state(model)}
                elif len(checks) - 1 - best["check"] >= cfg.patience:
                    break
        if best is not None and best["check"] != len(checks) - 1:
            model.load_state_dict(best["state"])
    finally:
        if bar is not None:
            bar.close()
        model.max_seq_length = full_length
        model.eval()
    tail = losses[-50:]
    out: dict[str, Any] = {
        "steps": len(losses),
        "steps_planned": steps,
        "final_loss": sum(tail) / len(tail),
        "max_seq_length": cut,
        "texts_cut": sum(n > cut for n in lengths),
    }
    if checks:
        out["checks"] = checks
        out["best_epoch"] = checks[best["check"]]["epoch"] if best else None
        out["stopped_early"] = len(losses) < steps
    return out


def _copy_state(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _val_accuracy(model: Any, label_vectors: Any, val: list[tuple[str, int]], batch_size: int) -> float:
    """Accuracy of the cosine classifier on the validation texts, batched by length."""
    import torch
    import torch.nn.functional as F

    order = sorted(range(len(val)), key=lambda i: len(val[i][0]))
    hits = 0
    model.eval()
    try:
        with torch.no_grad():
            vectors = F.normalize(label_vectors, dim=1)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                features = model.preprocess([val[i][0] for i in rows])
                features = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in features.items()}
                emb = F.normalize(model(features)["sentence_embedding"], dim=1)
                predicted = (emb @ vectors.T).argmax(dim=1).tolist()
                hits += sum(p == val[i][1] for p, i in zip(predicted, rows, strict=True))
    finally:
        model.train()
    return round(hits / max(1, len(val)), 6)
