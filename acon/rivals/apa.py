"""APA / AGLU: x times a learned gate that spans the sigmoid (lambda = 1) and the Gumbel (lambda -> 0) ones.

Source: "Adaptive Parametric Activation", Alexandridis, Deng, Nguyen, Luo, ECCV 2024 (arXiv 2407.08567);
official code kostas1515/AGLU (commit ed45253), ``classification/resnet_cifar.py`` and ``resnet_pytorch.py``:
``UniRect`` (AGLU, the intermediate-layer activation) and ``UniRect_static`` (its forward and backward).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acon._activation_registry import ACTIVATIONS


class AGLU(nn.Module):
    """``AGLU(x) = x * APA(x)``, ``APA(x) = (lambda exp(-kappa x) + 1) ** (-1 / lambda)``, one kappa and lambda per layer.

    As the official ``UniRect``: lambda ~ U(0, 1), kappa ~ U(0.8, 1.2) (``num_parameters=1``: per layer; the
    code can hold per-channel values but never uses them); lambda is guarded as ``relu(lambda) + 1e-8`` and APA
    runs as ``exp(softplus_{beta=-1}(kappa x - log lambda) / lambda)`` (softplus threshold 20), which does not
    overflow for large |x|. The official ``UniRect_static.backward`` differs from the derivative of its own
    forward in lambda: it drops the ``log(1 + lambda exp(-kappa x)) / lambda^2`` term of d log APA / d lambda.
    We keep the exact gradient (autograd), as the official ``Unified`` module in the README does.
    """

    def __init__(self, channels: int | None = None, *, lambda_init: tuple[float, float] = (0.0, 1.0),
                 kappa_init: tuple[float, float] = (0.8, 1.2)):
        super().__init__()
        self.channels = channels
        self.lambda_param = nn.Parameter(torch.empty(1).uniform_(*lambda_init))
        self.kappa_param = nn.Parameter(torch.empty(1).uniform_(*kappa_init))

    def forward(self, x: Tensor) -> Tensor:
        lam = F.relu(self.lambda_param) + 1e-8
        shifted = self.kappa_param * x - torch.log(lam)
        return x * torch.exp(F.softplus(shifted, beta=-1.0, threshold=20.0) * lam.reciprocal())

    def extra_repr(self) -> str:
        return f"{self.channels}"


def _apa_cost(channels: int, input_shape: Sequence[int], *, lambda_init: tuple[float, float] = (0.0, 1.0),
              kappa_init: tuple[float, float] = (0.8, 1.2)) -> dict:
    """Per element: kappa x, times 1/lambda, x * APA (3 mul); the shift (1 add); softplus, exp (2 other).
    Once per call: relu, log, reciprocal of lambda (3 other) and its + 1e-8 (1 add)."""
    n = math.prod(input_shape)
    return {"params": 2, "macs": 0,
            "elementwise": {"sigmoid": 0, "mul": 3 * n, "add": n + 1, "mean": 0, "other": 2 * n + 3}}


ACTIVATIONS.register("apa", AGLU, complexity=_apa_cost,
                     help="APA / AGLU: x * (lambda exp(-kappa x) + 1)^(-1/lambda), learned kappa, lambda (one per layer)")
