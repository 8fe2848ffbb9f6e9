"""A trained model's per-site activation statistics on the held-out split, for a trial to record.

The measurement itself is ``ablation.site_stats``; this module only chooses the batches: the first
``images`` validation images, normalised as in training, on the model's own device.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from studies.data import DataSplits
from studies.data.batches import DeviceData


def measure_held_out(model: nn.Module, data: DataSplits, *, images: int, batch_size: int, sites: Sequence = ()):
    """``ablation.site_stats.SiteStats`` of ``model`` on at most ``images`` validation images."""
    from ablation.site_stats import measure

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dd = DeviceData(data, device)
    size = max(1, min(batch_size, images))
    return measure(model, dd.batches("val", size), max_batches=math.ceil(images / size), sites=sites or None)
