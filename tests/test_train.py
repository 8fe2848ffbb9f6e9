"""The training engine on tiny models and the embedded digits: reproducibility, schedules, decay groups, failures."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from PIL import Image
from torch import nn

import acon
from studies.data.augment import random_crop, random_hflip
from studies.data import DataSplits, TensorSplit, load_dataset
from studies.training.schedules import lr_factor
from studies.training.loop import EpochMetrics, NonFiniteLossError, TrainConfig, param_groups, resolve_device, train


def tiny_cnn(activation: str = "relu", in_channels: int = 1, classes: int = 10) -> nn.Module:
    """conv-bn-act x2, pool, linear: a few thousand parameters."""
    options = {"r": 4} if activation == "meta_acon" else {}  # baselines take no option
    act = lambda c: acon.create_activation(activation, c, **options)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act(8), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), act(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    )


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits", limit=600, seed=0)


def _fit(data, activation="relu", init_seed=0, **cfg):
    torch.manual_seed(init_seed)
    model = tiny_cnn(activation, data.in_channels, data.num_classes)
    options = {"epochs": 2, "batch_size": 64, "lr": 0.1, "device": "cpu", **cfg}
    return model, train(model, data, TrainConfig(**options))


def _numbers(history: list[EpochMetrics]) -> list[tuple]:
    return [(m.epoch, m.train_loss, m.val_loss, m.val_acc, m.val_top5, m.lr) for m in history]


def test_same_seed_gives_identical_history(digits):
    _, a = _fit(digits, "meta_acon", augment=True, seed=3)
    _, b = _fit(digits, "meta_acon", augment=True, seed=3)
    _, c = _fit(digits, "meta_acon", augment=True, seed=4)
    assert _numbers(a.history) == _numbers(b.history)
    assert _numbers(a.history) != _numbers(c.history)


def test_training_learns_digits_and_reports_each_epoch(digits):
    seen = []
    torch.manual_seed(0)
    model = tiny_cnn()
    result = train(model, digits, TrainConfig(epochs=3, batch_size=32, lr=0.2, device="cpu"), on_epoch=seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3] and seen == result.history
    # far from the noise of real training: over init/shuffle seeds 0-7 the last val_acc was 0.80-0.92 and the loss
    # fell to 0.33-0.46 of the first epoch's (another CPU's rounding moves them far less than another seed does)
    assert result.history[-1].val_acc > 0.5  # chance is 0.1
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert 0.0 <= result.history[-1].val_top5 <= 1.0 and result.history[-1].val_top5 >= result.history[-1].val_acc
    assert result.final["val_acc"] == result.history[-1].val_acc and result.stopped_reason is None
    assert result.final["images_per_s"] > 0 and "test_acc" not in result.final


def test_lr_follows_the_schedule_per_epoch(digits):
    _, result = _fit(digits, epochs=4, schedule="linear", lr=0.2)
    steps = math.ceil(len(digits.train) / 64)
    assert [m.lr for m in result.history] == pytest.approx([0.2 * (1 - e * steps / (4 * steps)) for e in range(4)])


def test_schedules_warm_up_then_decay():
    assert [lr_factor("cosine", s, 10, warmup=4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor("cosine", 4, 10, warmup=4) == 1.0 and lr_factor("cosine", 7, 10, warmup=4) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10, warmup=4) == pytest.approx(0.0)
    assert lr_factor("linear", 5, 10) == pytest.approx(0.5)
    one = [lr_factor("onecycle", s, 100) for s in range(100)]
    assert one[0] == pytest.approx(1 / 25) and max(one) == one[30] == 1.0 and one[-1] < 1e-3
    with pytest.raises(ValueError, match="valid choices: cosine, linear, onecycle"):
        lr_factor("step", 0, 10)


def test_weight_decay_skips_biases_norms_and_acon_parameters():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), acon.MetaAconC(4, r=2), acon.AconC(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.randn(2, 1, 5, 5))
    decay, free = param_groups(model, 5e-4)
    decayed = {n for n, p in model.named_parameters() if any(p is q for q in decay["params"])}
    assert decayed == {"0.weight", "2.fc1.weight", "2.fc2.weight", "5.weight"}
    assert (decay["weight_decay"], free["weight_decay"]) == (5e-4, 0.0)
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))


def test_adamw_and_onecycle_with_label_smoothing_train(digits):
    _, result = _fit(digits, optimizer="adamw", lr=2e-2, batch_size=32, epochs=3, schedule="onecycle",
                     label_smoothing=0.1, warmup_epochs=0.5)
    assert result.history[-1].val_acc > 0.5  # chance is 0.1; 0.68-0.88 over init/shuffle seeds 0-7
    assert result.history[0].lr == pytest.approx(2e-2 / 25)


class _NanAfter(nn.Module):
    """Passes inputs through until its ``limit``-th training call, then returns NaN."""

    def __init__(self, limit: int):
        super().__init__()
        self.calls, self.limit = 0, limit

    def forward(self, x):
        self.calls += self.training
        return x * math.nan if self.training and self.calls >= self.limit else x


def test_nonfinite_loss_stops_with_the_recorded_reason(digits):
    steps = math.ceil(len(digits.train) / 64)
    torch.manual_seed(0)
    model = nn.Sequential(tiny_cnn(), _NanAfter(steps + 3))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3") as err:
        train(model, digits, TrainConfig(epochs=3, batch_size=64, device="cpu"))
    assert len(err.value.result.history) == 1 and err.value.result.stopped_reason == str(err.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    stopped = train(nn.Sequential(tiny_cnn(), _NanAfter(2)), digits, TrainConfig(epochs=2, device="cpu", nonfinite="stop"))
    assert stopped.stopped_reason.endswith("epoch 1, step 2") and stopped.history == []


def test_on_epoch_exception_propagates_unchanged(digits):
    class Pruned(Exception):
        pass

    boom, seen = Pruned("stop here"), []

    def on_epoch(m):
        seen.append(m.epoch)
        if m.epoch == 2:
            raise boom

    with pytest.raises(Pruned) as err:
        train(tiny_cnn(), digits, TrainConfig(epochs=4, device="cpu"), on_epoch=on_epoch)
    assert err.value is boom and seen == [1, 2]


def test_progress_counts_every_step(digits):
    calls = []
    train(tiny_cnn(), digits, TrainConfig(epochs=2, batch_size=100, device="cpu"), progress=lambda d, t: calls.append((d, t)))
    steps = math.ceil(len(digits.train) / 100)
    assert calls == [(i, 2 * steps) for i in range(1, 2 * steps + 1)]


@pytest.mark.parametrize("field,value,match", [
    ("optimizer", "adam", "valid choices: adamw, sgd"), ("schedule", "step", "valid choices: cosine, linear, onecycle"),
    ("lr", 0.0, r"lr must be in \(0.0"), ("epochs", 0, r"epochs must be an integer in 1\.\.10000"),
    ("label_smoothing", 1.0, r"label_smoothing must be in \[0.0, 1.0\)"), ("warmup_epochs", 5.0, "warmup_epochs"),
    ("device", "tpu", "valid choices: auto, cpu, cuda"), ("threads", 0, "threads must be an integer >= 1"),
])
def test_bad_config_values_say_what_is_allowed(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_model_that_cannot_take_the_images_is_refused_clearly(digits):
    with pytest.raises(ValueError, match="in_channels=1"):
        train(tiny_cnn(in_channels=3), digits, TrainConfig(epochs=1, device="cpu"))
    with pytest.raises(ValueError, match="10 classes"):
        train(tiny_cnn(classes=4), digits, TrainConfig(epochs=1, device="cpu"))


def test_threads_are_set_for_the_run_and_restored(digits):
    before, seen = torch.get_num_threads(), []
    train(tiny_cnn(), digits, TrainConfig(epochs=1, device="cpu", threads=1), on_epoch=lambda m: seen.append(torch.get_num_threads()))
    assert seen == [1] and torch.get_num_threads() == before


def test_random_crop_takes_shifted_windows_of_the_padded_image():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = random_crop(x, 1, torch.Generator().manual_seed(0))
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_hflip(x, torch.Generator().manual_seed(1))
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))


def test_folder_dataset_trains_through_a_dataloader_with_a_test_split(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for k, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            (tmp_path / split / str(k)).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (6, 6), colour).save(tmp_path / split / str(k) / f"{i}.png")
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.25)
    torch.manual_seed(0)
    result = train(tiny_cnn(in_channels=3, classes=2), data, TrainConfig(epochs=3, batch_size=4, lr=0.05, device="cpu"))
    assert len(result.history) == 3 and result.history[0].val_top5 is None
    assert result.final["test_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) and result.final["test_loss"] > 0


def test_tensor_data_with_test_split_reports_test_metrics(digits):
    test = TensorSplit(digits.val.x[:50], digits.val.y[:50])
    data = dataclasses.replace(digits, test=test)
    _, result = _fit(data, epochs=1)
    assert 0.0 <= result.final["test_acc"] <= 1.0 and result.final["test_loss"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_precision_channels_last_with_augmentation():
    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = tiny_cnn("meta_acon")
    result = train(model, data, TrainConfig(epochs=3, batch_size=32, lr=0.2, device="cuda", amp=True,
                                            channels_last=True, augment=True))
    assert next(model.parameters()).device.type == "cuda"
    assert all(math.isfinite(m.train_loss) and math.isfinite(m.val_loss) for m in result.history)
    assert result.history[-1].val_acc > 0.5  # chance is 0.1


@pytest.mark.parametrize("kind", ["folder", "tensor"])
def test_split_of_129_with_batch_128_trains_meta_acon_and_ends_the_schedule_on_its_last_step(tmp_path, monkeypatch, kind):
    # 129 % 128 == 1: a lone last training sample would be a BatchNorm batch of one ("Expected more
    # than 1 value per channel when training") and an extra step past the end of the linear schedule.
    import studies.training.loop as train_module
    from ablation import build_model

    for split, n in (("train", 129), ("val", 4)):
        for i in range(n):
            (tmp_path / split / str(i % 2)).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (5, 5), (200 * (i % 2), i % 256, 50)).save(tmp_path / split / str(i % 2) / f"{i}.png")
    data = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)
    if kind == "tensor":
        x, y = zip(*(data.train[i] for i in range(len(data.train))))
        data = dataclasses.replace(data, train=TensorSplit(torch.stack(x), torch.tensor(y)))
    assert len(data.train) == 129
    schedulers = []
    make = train_module.make_scheduler
    monkeypatch.setattr(train_module, "make_scheduler", lambda *a: schedulers.append(make(*a)) or schedulers[-1])
    torch.manual_seed(0)
    model, sites = build_model("tiny_cnn", activation="meta_acon", generator="channel", r=4, num_classes=2,
                               in_channels=3, small_input=True, input_size=8)
    assert sites
    steps = []
    result = train(model, data, TrainConfig(epochs=2, batch_size=128, lr=0.05, schedule="linear", device="cpu"),
                   progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)]
    assert schedulers[0].last_epoch == 2 and schedulers[0].get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert all(lr >= 0 for lr in schedulers[0].get_last_lr())
    assert all(math.isfinite(m.train_loss) for m in result.history)


def test_compiled_meta_acon_trains_like_eager_and_the_next_trial_reuses_the_graph(digits):
    # aot_eager traces forward and backward as inductor does (custom op included) without codegen: fast on CPU
    from torch._dynamo.utils import counters

    # 160 images in batches of 64: two full batches and a last one of 32, which runs eager
    data = dataclasses.replace(digits, train=TensorSplit(digits.train.x[:160], digits.train.y[:160]))
    _, eager = _fit(data, "meta_acon", epochs=1)
    frames = counters["frames"]["ok"]
    _, compiled = _fit(data, "meta_acon", epochs=1, compile="aot_eager")
    # dynamo compiled the model once: no second graph for the short batch (with CUDA graphs, no second recording)
    assert counters["frames"]["ok"] - frames == 1
    a, b = eager.history[0], compiled.history[0]
    assert math.isfinite(a.train_loss)
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4) and b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
    # the next trial of the process (a new model, other initial weights) reuses the compiled graph, with its own weights
    frames = counters["frames"]["ok"]
    _, again = _fit(data, "meta_acon", epochs=1, compile="aot_eager", init_seed=7)
    assert counters["frames"]["ok"] == frames
    _, eager_again = _fit(data, "meta_acon", epochs=1, init_seed=7)
    c, d = eager_again.history[0], again.history[0]
    assert c.train_loss != pytest.approx(a.train_loss, rel=1e-3)  # other weights: another run
    assert d.train_loss == pytest.approx(c.train_loss, rel=1e-4) and d.val_loss == pytest.approx(c.val_loss, rel=1e-4)


def test_compile_setting_accepts_booleans_and_modes_only():
    # one type, the mode name: a boolean is read as "on"/"off"
    assert TrainConfig(compile=True).compile == "on" and TrainConfig(compile="reduce-overhead").compile == "reduce-overhead"
    with pytest.raises(ValueError, match="unknown compile 'fast'; valid choices: aot_eager, default, max-autotune"):
        TrainConfig(compile="fast")
