"""Fine-tuning the sentence encoder on the training labels before fitting the head.

A cosine classifier (scaled cosine similarity to one learned vector per label) is trained
jointly with the encoder using cross-entropy with label smoothing. It pulls texts of one
label together and apart from the others, which is what both the head and the energy OOD
score feed on. One epoch over CLINC150's 15,000 texts takes about 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass

from models.embedder import Embedder


@dataclass
class FinetuneConfig:
    epochs: float = 1.0
    lr: float = 5e-5  # encoder
    head_lr: float = 5e-3  # label vectors of the cosine classifier
    batch_size: int = 32
    scale: float = 30.0  # cosine → logit scale
    label_smoothing: float = 0.1
    warmup: float = 0.1  # share of steps with a rising learning rate
    seed: int = 0


def finetune_encoder(
    embedder: Embedder, texts: list[str], labels: list[str], cfg: FinetuneConfig, progress: bool = False
) -> dict[str, float]:
    """Train ``embedder.model`` in place; returns the last losses for the manifest."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    names = sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    model = embedder.model
    dim = embedder.dim
    label_vectors = torch.nn.Parameter(torch.randn(len(names), dim, device=model.device) * 0.01)
    opt = torch.optim.AdamW(
        [{"params": model.parameters(), "lr": cfg.lr}, {"params": [label_vectors], "lr": cfg.head_lr}],
        weight_decay=0.01,
    )
    steps = max(1, int(len(texts) * cfg.epochs / cfg.batch_size))
    warm = max(1, int(cfg.warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / steps)
    )
    order: list[int] = []
    while len(order) < steps * cfg.batch_size:
        perm = list(range(len(texts)))
        rng.shuffle(perm)
        order += perm
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="fine-tuning encoder", file=sys.stderr)
    model.train()
    losses: list[float] = []
    try:
        for step in range(steps):
            batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
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
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    tail = losses[-50:]
    return {"steps": float(steps), "final_loss": sum(tail) / len(tail)}
