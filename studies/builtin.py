"""The built-in studies: design space, reduction ratio, placement, variants and HPO.

Each is a plain ``Study``; the ``quick`` preset runs on the embedded dataset on a CPU in
a few minutes, ``default`` is the same with more epochs and seeds, ``paper`` is for a GPU
(a dict preset changes settings only; a ``Preset`` may also change the design cells).
"""
from __future__ import annotations

from typing import Any

import optuna

from studies.settings import Preset
from studies.spec import STUDIES, Study

META = {"activation": "meta_acon", "generator": "channel", "placement": "all"}
BASELINES = ({"activation": "relu", "placement": "all"}, {"activation": "silu", "placement": "all"})
CIFAR = {"dataset": "cifar10", "model": "resnet20", "small_input": True, "augment": True, "batch_size": 128}
DEFAULT = {"seeds": 5, "epochs": 10}
PAPER = {**CIFAR, "seeds": 5, "epochs": 30}
# The parameter-matched control (acon.gated): ReLU times a gate with channel-wise meta-ACON's generator layout, r = 8.
CONTROL = {"activation": "se_control", "r": 8, "placement": "all"}


def _register(study: Study) -> Study:
    return STUDIES.register(study.name, study, help=study.doc.splitlines()[0])


_DESIGN_SPACE = BASELINES + (
    {"activation": "acon_c", "placement": "all"},
    *({**META, "generator": g, "r": 8} for g in ("layer", "channel", "pixel")),
)
_register(Study(
    name="design_space",
    doc="Which beta generator? layer-, channel- and pixel-wise meta-ACON against ReLU, Swish and ACON-C.",
    designs=_DESIGN_SPACE,
    presets={"default": DEFAULT, "paper": Preset(PAPER, designs=_DESIGN_SPACE + (CONTROL,))},
))

_register(Study(
    name="reduction_ratio",
    doc="Does r matter? channel-wise meta-ACON with reduction ratio r from 2 to 16 (to 64 on the last stage for paper).",
    designs=({"activation": "relu", "placement": "all"}, *({**META, "r": r} for r in (2, 4, 8, 16))),
    presets={
        "default": DEFAULT,
        "paper": Preset(PAPER, designs=({"activation": "relu", "placement": "all"},
                                        *({**META, "r": r, "placement": "last_stage"} for r in (2, 4, 8, 16, 32, 64)))),
    },
))

_register(Study(
    name="placement",
    doc="Where does meta-ACON help? channel-wise meta-ACON at all sites, the first, the last, the last stage.",
    designs=({"activation": "relu", "placement": "all"},
             *({**META, "r": 8, "placement": p} for p in ("all", "first:1", "last:1", "last_stage"))),
    presets={
        "default": DEFAULT,
        "paper": Preset({**PAPER, "model": "resnet50"}, designs=(
            {"activation": "relu", "placement": "all"},
            *({**META, "r": 16, "placement": p} for p in ("all", "bottleneck_3x3", "last_stage", "first:4", "last:4")))),
    },
))

_VARIANTS = tuple({"activation": a, "placement": "all"} for a in ("relu", "silu", "acon_a", "acon_b", "acon_c")) + (
    {**META, "r": 8},)
_register(Study(
    name="variants",
    doc="Does it beat ReLU and Swish? ReLU, Swish, ACON-A, ACON-B, ACON-C and channel-wise meta-ACON.",
    designs=_VARIANTS,
    presets={"default": DEFAULT, "paper": Preset(PAPER, designs=_VARIANTS + (CONTROL,))},
))


def _same_designs_everywhere(name: str, doc: str, designs: tuple[dict[str, Any], ...]) -> Study:
    """Register a grid whose presets (quick, default, paper) all run ``designs``."""
    return _register(Study(name=name, doc=doc, designs=designs,
                           presets={"default": DEFAULT, "paper": Preset(PAPER, designs=designs)}))


# meta-ACON's rivals (acon.rivals). DY-ReLU at its paper's reduction ratio, r = 4 (the study's r axis, else 16).
_RIVALS = BASELINES + (
    {"activation": "acon_c", "placement": "all"}, {**META, "r": 8},
    {"activation": "dy_relu_b", "r": 4, "placement": "all"},
    *({"activation": a, "placement": "all"} for a in ("frelu", "pau", "smu", "apa")),
)
_same_designs_everywhere(
    "rivals", "Is meta-ACON the best dynamic activation? ACON-C and meta-ACON against DY-ReLU-B, FReLU, PAU, SMU and "
    "APA.", _RIVALS)

_DYNAMIC = ({"activation": "relu", "placement": "all"},
            *({**META, "generator": g, "r": 8} for g in ("layer", "channel", "pixel")),
            *({"activation": f"dy_relu_{v}", "r": 4, "placement": "all"} for v in "abc"))
_same_designs_everywhere(
    "dynamic", "Two design spaces side by side: meta-ACON layer/channel/pixel-wise against DY-ReLU A/B/C.", _DYNAMIC)

# The options the two papers ablate, on the options axis (studies.design_options): DY-ReLU's K linear pieces (the
# paper's choice K = 2) and FReLU's funnel window (3 x 3 by default; the paper ablates its size).
_RIVAL_OPTIONS = ({"activation": "relu", "placement": "all"},
                  *({"activation": "dy_relu_b", "r": 4, "placement": "all", "options": {"k": k}} for k in (1, 2, 3)),
                  *({"activation": "frelu", "placement": "all", "options": {"kernel_size": n}} for n in (3, 5)))
_same_designs_everywhere(
    "rival_options", "Do the rivals' own options matter? DY-ReLU-B with K = 1, 2, 3 pieces and FReLU with a 3x3 or "
    "5x5 window.", _RIVAL_OPTIONS)


def hpo_space(trial: optuna.Trial) -> dict[str, Any]:
    """TPE search space of the ``hpo`` study: learning rate, weight decay, epochs."""
    return {
        "lr": trial.suggest_float("lr", 1e-3, 0.5, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "epochs": trial.suggest_int("epochs", 2, 8),
    }


_register(Study(
    name="hpo",
    doc="Tune lr, weight decay and epochs (TPE, median pruning) for channel-wise meta-ACON at all sites.",
    designs=({**META, "r": 8},),
    sampler="tpe",
    pruner="median",
    search_space=hpo_space,
    fixed={"n_trials": 8, "seeds": 1},
    presets={"default": {"n_trials": 30}, "paper": {**CIFAR, "n_trials": 50}},
))
