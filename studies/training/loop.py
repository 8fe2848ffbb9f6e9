"""The short-schedule training engine: one ``train(model, data, cfg)`` call per trial.

SGD or AdamW, per-step lr schedules with warm-up, label smoothing, weight decay only on weight matrices
and kernels (never on biases, norms or ACON's p1/p2/beta), batched device-side augmentation, mixed
precision on CUDA, and a per-epoch callback that may raise (e.g. ``optuna.TrialPruned``) to stop.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from studies.errors import UserError

from studies.data.augment import augment_batch, default_padding
from studies.data.batches import DeviceData, steps_per_epoch
from studies.data import DataSplits
from studies.training.evaluate import evaluate
from studies.training.schedules import make_scheduler
from studies.training.config import COMPILE_MODES, DEVICES, NO_DECAY_NAMES, TrainConfig, check_choice

__all__ = ["EpochMetrics", "NonFiniteLossError", "TrainConfig", "TrainResult", "param_groups", "resolve_device", "train"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message is the recorded reason, ``.result`` the partial run."""

    def __init__(self, reason: str, result: "TrainResult | None" = None):
        super().__init__(reason)
        self.reason, self.result = reason, result


@dataclass
class EpochMetrics:
    """What one epoch produced; ``val_acc`` and ``val_top5`` are fractions in [0, 1]."""

    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_top5: float | None
    epoch_time_s: float
    images_per_s: float
    lr: float


@dataclass
class TrainResult:
    """The run's per-epoch history, its final numbers and why it stopped early (None if it did not)."""

    history: list[EpochMetrics] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    stopped_reason: str | None = None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA -> UserError (a ValueError)."""
    check_choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for but CUDA is not available here "
                        "(torch.cuda.is_available() is False); use --device auto or cpu")
    return torch.device(device)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: decay on weights with ndim > 1, none on biases, norms and ACON's p1/p2/beta/p."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over ``param_groups``."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train(
    model: nn.Module,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` for ``cfg.epochs``, validating after each epoch; the model is trained in place."""
    with _threads(cfg.threads):
        return _Run(model, data, cfg).fit(on_epoch, progress)


class _Run:
    """One training run's state: device, data, optimizer, schedule, precision and random streams."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: TrainConfig):
        self.cfg, self.data = cfg, data
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)  # dropout and any other global-RNG use inside the model
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.fmt)
        self.net = compiled(self.model, cfg.compile)
        # The compiled model sees one batch shape: an epoch's shorter last batch runs eager (same
        # parameters, same result) instead of costing a second compile, or a second CUDA graph.
        self.full_batch = min(cfg.batch_size, len(data.train))
        self.dd = DeviceData(data, self.device, workers=cfg.workers)
        self.steps = steps_per_epoch(len(data.train), cfg.batch_size)
        self.opt = make_optimizer(self.model, cfg)
        warmup = round(cfg.warmup_epochs * self.steps)
        self.sched = make_scheduler(self.opt, cfg.schedule, cfg.epochs * self.steps, warmup)
        self.amp_dtype = _amp_dtype(self.device, cfg.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.pad = default_padding(data.image_size)
        self.done = 0

    def fit(self, on_epoch, progress) -> TrainResult:
        """All epochs; the callback's exceptions propagate unchanged."""
        _check_model_input(self.model, self.dd, self.data)
        result = TrainResult()
        for epoch in range(1, self.cfg.epochs + 1):
            lr = self.opt.param_groups[0]["lr"]
            train_loss, seconds, images, reason = self._epoch(epoch, progress)
            if reason is not None:
                return self._nonfinite(result, reason)
            val = self._evaluate("val")
            m = EpochMetrics(epoch, train_loss, val["loss"], val["acc"], val.get("top5"), seconds, images / seconds, lr)
            result.history.append(m)
            if on_epoch is not None:
                on_epoch(m)
        result.final = self._final(result.history)
        return result

    def _epoch(self, epoch: int, progress) -> tuple[float, float, int, str | None]:
        """One pass over the training split: (mean loss, seconds, images, non-finite reason or None)."""
        self.model.train()
        total, images, start = 0.0, 0, time.perf_counter()
        for step, (x, y) in enumerate(self.dd.batches("train", self.cfg.batch_size, generator=self.gen), 1):
            loss = self._step(x, y)
            if not math.isfinite(loss):
                return math.nan, 0.0, images, f"non-finite training loss ({loss}) at epoch {epoch}, step {step}"
            total, images = total + loss * len(y), images + len(y)
            self.done += 1
            if progress is not None:
                progress(self.done, self.cfg.epochs * self.steps)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return total / max(1, images), time.perf_counter() - start, images, None

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward, backward and update on one batch; returns the loss (before any update if non-finite)."""
        if self.cfg.augment:
            x = augment_batch(x, self.gen, pad=self.pad, hflip=self.data.hflip)
        x = x.contiguous(memory_format=self.fmt)
        net = self.net if len(y) == self.full_batch else self.model
        with self._autocast():
            loss = self.loss_fn(net(x), y)
        value = loss.item()  # one sync per step: we must not step on a NaN loss
        if not math.isfinite(value):
            return value
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return value

    def _evaluate(self, split: str) -> dict[str, float]:
        return evaluate(self.model, self.dd, split, self.cfg.eval_batch_size, self.data.num_classes,
                        autocast=self._autocast, memory_format=self.fmt)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _final(self, history: list[EpochMetrics]) -> dict[str, float]:
        """Last epoch's validation numbers, the test split's if any, and overall throughput."""
        last = history[-1]
        seconds = sum(m.epoch_time_s for m in history)
        final = {"val_acc": last.val_acc, "val_loss": last.val_loss, "train_loss": last.train_loss,
                 "train_time_s": seconds, "images_per_s": sum(m.images_per_s * m.epoch_time_s for m in history) / seconds}
        if last.val_top5 is not None:
            final["val_top5"] = last.val_top5
        if "test" in self.dd.splits:
            test = self._evaluate("test")
            final.update({f"test_{k}": v for k, v in test.items()})
        return final

    def _nonfinite(self, result: TrainResult, reason: str) -> TrainResult:
        result.stopped_reason = reason
        if result.history:
            result.final = self._final(result.history)
        if self.cfg.nonfinite == "raise":
            raise NonFiniteLossError(reason, result)
        return result


def compiled(model: nn.Module, setting: bool | str) -> nn.Module:
    """``model`` wrapped by ``torch.compile`` as ``setting`` asks (see ``COMPILE_MODES``), or ``model`` itself.

    Only full training batches run compiled; an epoch's shorter last batch and evaluation stay eager (a
    second shape or a graph for eval mode would double the compile time, and with CUDA graphs
    ("reduce-overhead") record a second graph, for a small share of the work). Dynamo keeps the compiled
    graph for the whole process with the weights as its inputs, so a later trial of the same model
    and shapes (a new instance, other weights) runs it without compiling again; inductor's disk cache
    helps across processes.
    """
    options = COMPILE_MODES[("on" if setting else "off") if isinstance(setting, bool) else setting]
    return model if options is None else torch.compile(model, **options)


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None (full precision) off CUDA or with amp off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _check_model_input(model: nn.Module, dd: DeviceData, data: DataSplits) -> None:
    """Refuse, with a clear message, a model that cannot take this dataset's image shape or classes."""
    x, _ = next(dd.batches("val", 2))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        raise ValueError(
            f"the model cannot take {data.name} images of shape {tuple(x.shape[1:])} "
            f"({data.in_channels} channels, {data.image_size}x{data.image_size}); build it with in_channels="
            f"{data.in_channels}, or convert the data with studies.data.adapt(data, in_channels=..., image_size=...): {e}"
        ) from e
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise ValueError(f"the model outputs shape {tuple(out.shape)} but {data.name} has {data.num_classes} classes")


@contextlib.contextmanager
def _threads(threads: int | None):
    """Set torch's intra-op thread count for the run and restore it after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
