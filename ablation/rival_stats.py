"""What a rival activation's site learned (DY-ReLU, FReLU, PAU, SMU, SMU-1, APA): the columns of
``ablation.site_stats``'s table beyond ACON's, each NaN where it means nothing, measured on the same held-out inputs.

- ``piece{k}_share`` (DY-ReLU): the fraction of the input elements at which piece k, ``a^k x + b^k``, is the
  maximum (ties go to the lower k). Pieces 1 to 3 are always columns; a site with K > 3 adds ``piece4_share`` ...
  C's spatial attention ``pi >= 0`` scales every piece alike, so it does not change which piece wins.
- ``piece{k}_slope`` (DY-ReLU): the mean predicted slope ``a^k`` over samples and channels (A: one per sample),
  as the hyper-function outputs it (before C's attention). The paper's initial point is a^1 = 1, a^2 = 0 (ReLU).
- ``branch_share`` (FReLU): the fraction of the input elements at which the spatial branch wins the max,
  ``T(x) > x`` with ``T`` the module's own depthwise conv + BN (eval mode: BN's running statistics).
- ``curve_params`` (PAU, SMU, SMU-1, APA, one function per layer): the learned parameters as a JSON object,
  enough to rebuild the curve (``rival_curve``): PAU ``numerator`` a_0..a_m, ``denominator`` b_1..b_n and
  ``version``; SMU and SMU-1 ``alpha`` (fixed) and ``mu``; APA the raw ``kappa`` and ``lambda`` parameters
  (the module uses ``relu(lambda) + 1e-8``). A parameter, not a statistic of the inputs.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from acon import _layout
from acon.rivals.apa import AGLU
from acon.rivals.dy_relu import DyReLU
from acon.rivals.frelu import FReLU
from acon.rivals.pau import PAU
from acon.rivals.smu import SMU, SMU1

RIVAL_MODULES = (DyReLU, FReLU, PAU, SMU, SMU1, AGLU)
MAX_PIECES = 3  # piece columns always present; DY-ReLU's paper uses K = 2 and ablates K up to 3
RIVAL_COLUMNS = (tuple(f"piece{k}_share" for k in range(1, MAX_PIECES + 1))
                 + tuple(f"piece{k}_slope" for k in range(1, MAX_PIECES + 1)) + ("branch_share", "curve_params"))
#: Pointwise rivals: one learned curve y = f(x) per site, drawn from ``curve_params``.
POINTWISE = {"pau": PAU, "smu": SMU, "smu1": SMU1, "apa": AGLU}


def describe_rival(module: nn.Module) -> tuple[str, str] | None:
    """(registry name, the options that shape its function) of a rival module; None for any other module."""
    if isinstance(module, DyReLU):
        return f"dy_relu_{module.variant.lower()}", f"k={module.k}"
    if isinstance(module, FReLU):
        return "frelu", f"kernel_size={module.kernel_size}"
    if isinstance(module, PAU):
        m, n = module.degrees
        return "pau", f"version={module.version},degrees=({m},{n})"
    if isinstance(module, (SMU, SMU1)):
        return ("smu1" if isinstance(module, SMU1) else "smu"), f"alpha={module.alpha:g}"
    if isinstance(module, AGLU):
        return "apa", "-"
    return None


def observe_rival(acc: Any, module: nn.Module, xc: Tensor) -> None:
    """Add one batch's counts for a DY-ReLU (piece wins, slope sums) or FReLU (branch wins) to ``acc``
    (``site_stats._Calls``); ``xc`` is the site's input, channels first."""
    if isinstance(module, DyReLU):
        theta = module.coefficients(xc)  # (N, K, 2, C')
        pieces = torch.stack([xc * _layout.like_input(theta[:, k, 0, :, None, None], xc)
                              + _layout.like_input(theta[:, k, 1, :, None, None], xc) for k in range(module.k)])
        acc.add("piece_wins", torch.bincount(pieces.argmax(0).flatten(), minlength=module.k))
        acc.add("piece_slope", theta[:, :, 0, :].sum(dim=(0, 2)))
    elif isinstance(module, FReLU):
        grid = xc[:, :, None, None] if xc.ndim == 2 else xc  # an (N, C) is a 1 x 1 grid, as the module reads it
        grid = grid.to(module.conv_frelu.weight.dtype)
        acc.add("branch_wins", (module.bn_frelu(module.conv_frelu(grid)) > grid).sum())


def rival_row(acc: Any) -> dict[str, Any]:
    """The rival columns of one site (NaN where they mean nothing); DY-ReLU with K > 3 adds piece columns."""
    out: dict[str, Any] = {k: math.nan for k in RIVAL_COLUMNS}
    module, n = acc.module, max(acc.elements, 1)
    if isinstance(module, DyReLU) and "piece_wins" in acc.sums:
        wins, slopes = acc.total("piece_wins"), acc.total("piece_slope") / (acc.samples * module.width)
        for k in range(module.k):
            out[f"piece{k + 1}_share"], out[f"piece{k + 1}_slope"] = float(wins[k]) / n, float(slopes[k])
    elif isinstance(module, FReLU) and "branch_wins" in acc.sums:
        out["branch_share"] = float(acc.total("branch_wins")) / n
    else:
        out["curve_params"] = curve_params(module)
    return out


def curve_params(module: nn.Module) -> Any:
    """A pointwise rival's learned parameters as a JSON object (see the module doc); NaN for any other module."""
    if isinstance(module, PAU):
        params = {"numerator": module.numerator.tolist(), "denominator": module.denominator.tolist(),
                  "version": module.version}
    elif isinstance(module, (SMU, SMU1)):
        params = {"alpha": module.alpha, "mu": module.mu.item()}
    elif isinstance(module, AGLU):
        params = {"kappa": module.kappa_param.item(), "lambda": module.lambda_param.item()}
    else:
        return math.nan
    return json.dumps(params)


def rival_curve(activation: str, params: str, x: np.ndarray) -> np.ndarray:
    """``f(x)`` of a pointwise rival rebuilt from its ``curve_params``, by the module's own forward in float64."""
    p = json.loads(params)
    if activation == "pau":
        module: nn.Module = PAU(init=(p["numerator"], p["denominator"]), version=p["version"])
    elif activation in ("smu", "smu1"):
        module = POINTWISE[activation](alpha=p["alpha"], mu=p["mu"])
    elif activation == "apa":
        module = AGLU()
        with torch.no_grad():
            module.kappa_param.fill_(p["kappa"]), module.lambda_param.fill_(p["lambda"])
    else:
        raise ValueError(f"no learned curve for {activation!r}; valid choices: {', '.join(sorted(POINTWISE))}")
    with torch.no_grad():
        return module.double()(torch.as_tensor(x, dtype=torch.float64)).numpy()
