"""Evaluation of a classifier on one split: mean cross-entropy, top-1 and (over 5 classes) top-5 accuracy."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from studies.data.batches import DeviceData


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dd: DeviceData,
    split: str,
    batch_size: int,
    num_classes: int,
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """``{"loss", "acc"[, "top5"]}`` of ``model`` on ``split``, accuracies as fractions; sums stay on the device."""
    model.eval()
    loss = torch.zeros((), device=dd.device, dtype=torch.float64)
    hits = torch.zeros(2, device=dd.device, dtype=torch.float64)
    n = 0
    k = min(5, num_classes)
    for x, y in dd.batches(split, batch_size):
        with autocast():
            logits = model(x.contiguous(memory_format=memory_format))
        logits = logits.float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(k, dim=1).indices
        hits[0] += (top[:, 0] == y).sum()
        hits[1] += (top == y[:, None]).any(dim=1).sum()
        n += len(y)
    out = {"loss": loss.item() / n, "acc": hits[0].item() / n}
    if num_classes > 5:
        out["top5"] = hits[1].item() / n
    return out
