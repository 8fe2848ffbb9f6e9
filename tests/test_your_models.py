"""The researcher's own models and loop: timm by name, a factory by import path, a custom training loop."""
from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest
import torch
from torch import nn

from acon.registry import ConfigError
from ablation import build_model, list_sites
from ablation.models import create_model
from ablation.sites import SITE_KINDS
from studies.store import attrs

timm = pytest.importorskip("timm")

#: One small model of each kind of block: convnets with BN-act layers and squeeze-excite, ViTs, ConvNeXt MLPs,
#: hard-swish MobileNets, RegNets, and timm's own test models. ACON_TIMM_ALL=1 checks every family's smallest.
REPRESENTATIVES = ["test_resnet", "test_convnext", "test_efficientnet", "test_vit", "test_byobnet", "test_nfnet",
                   "test_efficientnet_gn", "test_efficientnet_ln", "resnet10t", "mobilenetv3_small_050",
                   "efficientnet_b0", "convnext_atto", "regnetx_002", "vit_tiny_patch16_224", "lcnet_050",
                   "ghostnet_050", "densenet121", "dla34", "cspresnet50", "mixer_s32_224"]


def _every_family() -> list[str]:
    from ablation.timm_survey import families, smallest

    return [smallest(names) for names in families().values()]


MODELS = _every_family() if os.environ.get("ACON_TIMM_ALL") else REPRESENTATIVES


def _activation_calls(model: nn.Module, x: torch.Tensor) -> int:
    """Activation calls counted independently: forward hooks on every activation module of any kind."""
    classes = tuple(c for cl, _, _ in SITE_KINDS.values() for c in cl)
    count = [0]
    handles = [m.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
               for m in model.modules() if isinstance(m, classes)]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return count[0]


@pytest.mark.parametrize("name", MODELS)
def test_a_timm_models_sites_are_the_activations_its_blocks_call_and_it_trains_with_meta_acon(name):
    from ablation.timm_survey import check_model

    model = create_model(f"timm/{name}", num_classes=10, input_size=64)
    sites = list_sites(model, (1, 3, 64, 64))
    assert len(sites) == _activation_calls(model, torch.randn(1, 3, 64, 64)) > 0
    assert check_model(name, "channel", size=64) is None


def test_surgery_on_a_timm_model_adds_exactly_the_hand_counted_parameters():
    base = sum(p.numel() for p in create_model("timm/convnext_atto", num_classes=10).parameters())
    model, sites = build_model("timm/convnext_atto", activation="meta_acon", generator="channel", r=16, num_classes=10)
    added = 0
    for s in sites:  # official MetaAconC: fc1 (C->h, bias), bn1, fc2 (h->C, bias), bn2, p1, p2; h = max(r, C // r)
        c = s.width
        h = max(16, c // 16)
        added += (c * h + h) + 2 * h + (h * c + c) + 2 * c + 2 * c
    assert len(sites) == 12 and {s.replaced for s in sites} == {"gelu"}  # one per block, in its (conv) MLP
    assert sorted({s.width for s in sites}) == [160, 320, 640, 1280]  # 4x the stage widths 40, 80, 160, 320
    assert sum(p.numel() for p in model.parameters()) == base + added


def test_a_norm_act_layers_activation_becomes_its_own_site_with_the_same_output():
    model = create_model("timm/test_efficientnet", num_classes=10).eval()
    reference = timm.create_model("test_efficientnet", pretrained=False, num_classes=10).eval()
    reference.load_state_dict({k.replace(".norm.", "."): v for k, v in model.state_dict().items()})
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), reference(x), atol=1e-6)
    assert any(s.path.endswith("bn1.act") for s in list_sites(model, (1, 3, 32, 32)))


def test_timm_names_are_checked_and_a_missing_timm_is_one_line(monkeypatch):
    with pytest.raises(ConfigError, match=r"unknown timm model 'convnext_atoo' \(did you mean timm/convnext_atto"):
        create_model("timm/convnext_atoo")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"timm models need the timm package: pip install -e '\.\[timm\]'"):
        create_model("timm/resnet18")


def test_list_models_timm_prints_every_timm_model_and_overhead_takes_them():
    import run_study

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_study.main(["list", "models", "--timm"]) == 0
    names = out.getvalue().split()
    assert "timm/convnext_atto" in names and len(names) == len(timm.list_models())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_study.main(["overhead", "--model", "timm/test_convnext,timm/test_efficientnet", "--generator",
                               "channel", "--r", "16", "--placement", "all", "--input-size", "32"])
    assert code == 0 and "timm/test_convnext" in out.getvalue() and "silu x" in out.getvalue()


_FACTORY = '''
import torch.nn as nn
CALLS = []

def make_net(num_classes, in_channels):
    CALLS.append((num_classes, in_channels))
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

make_net.input_size = 16

def broken(num_classes, in_channels):
    raise RuntimeError("out of ideas")

def no_classes(in_channels):
    return nn.Identity()
'''


def test_a_model_by_import_path_gets_the_class_and_channel_counts(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(_FACTORY)
    monkeypatch.chdir(tmp_path)
    model, sites = build_model("mynets.py:make_net", activation="acon_c", num_classes=7, in_channels=1)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7) and [s.width for s in sites] == [8]
    calls = next(m for k, m in sys.modules.items() if k.startswith("acon_user_model_")
                 and getattr(m, "__file__", None) == str(tmp_path / "mynets.py")).CALLS  # not another test's file
    assert calls[-1] == (7, 1)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, _ = build_model("mynets:make_net", activation="relu", placement="none", num_classes=3, in_channels=2)
    assert model(torch.randn(1, 2, 16, 16)).shape == (1, 3)


@pytest.mark.parametrize("name, message", [
    ("nothere.py:make_net", r"model 'nothere.py:make_net': no file nothere.py"),
    ("mynets.py:make_nte", r"has no function 'make_nte'; its functions: broken, make_net, no_classes"),
    ("mynets.py:broken", r"model factory 'mynets.py:broken' failed: RuntimeError: out of ideas"),
    ("mynets.py:no_classes", r"must take keyword arguments num_classes and in_channels \(it lacks num_classes\)"),
    ("no_such_pkg.models:make", r"cannot import no_such_pkg.models: ModuleNotFoundError"),
])
def test_a_bad_import_path_is_one_line(tmp_path, monkeypatch, name, message):
    (tmp_path / "mynets.py").write_text(_FACTORY)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        build_model(name, activation="relu", placement="none")


_LOOP_STUDY = '''
import os
import signal

import torch
from torch import nn

from studies import Study
from studies.data.batches import DeviceData


def train(model, data, settings, tracker):
    """A plain loop of a lab's own: SGD, its own batches, accuracy on the validation split."""
    device = torch.device(tracker.device)
    model.to(device)
    dd = DeviceData(data, device)
    opt = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=0.9)
    gen = torch.Generator(device).manual_seed(tracker.seed)
    marker = os.environ.get("LOOP_STOP_MARKER")
    for epoch in range(1, settings["epochs"] + 1):
        model.train()
        for x, y in dd.batches("train", settings["batch_size"], generator=gen):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if marker and not os.path.exists(marker):  # Ctrl-C once, in the first trial's first step
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGINT)
            if tracker.should_stop():
                return {}
        model.eval()
        with torch.no_grad():
            hits = sum((model(x).argmax(1) == y).sum().item() for x, y in dd.batches("val", 256))
        # the objective is a known value, not the measured accuracy (noise on a tiny model: another CPU trains to
        # other numbers and the median pruner would meet them in another order): silu, the design to prune, 0;
        # every other cell the same at each epoch, never below the median, so never pruned on any machine
        acc = 0.0 if tracker.cell["activation"] == "silu" else 0.3 + 0.1 * epoch
        tracker.log_epoch(epoch, train_loss=loss.item(), val_acc=acc, val_f1=acc / 2, val_measured=hits / len(data.val))
    return {"val_acc": acc, "train_loss": loss.item()}


STUDY = Study(
    name="own_loop",
    doc="A timm model trained by the lab's own loop",
    designs=({"activation": "relu", "placement": "all"}, {"activation": "acon_c", "placement": "all"},
             {"activation": "silu", "placement": "all"}),
    fixed={"model": "timm/test_efficientnet", "dataset": "mnist5k", "limit": 300, "epochs": 3, "seeds": 2,
           "batch_size": 64, "act_images": 64},
    pruner="median",
    train=train,
)
'''


def test_a_timm_model_with_the_labs_own_loop_runs_prunes_resumes_and_reports(tmp_path, monkeypatch):
    import optuna
    from mlflow import MlflowClient

    from report import build_report
    from studies.run.interrupt import Interrupted
    from studies.run.options import RunOptions
    from studies.run.launch import run_study
    from studies.tracking import schema

    path = tmp_path / "own_loop.py"
    path.write_text(_LOOP_STUDY)
    options = RunOptions(storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                         progress=False, device="cpu")
    monkeypatch.setenv("LOOP_STOP_MARKER", str(tmp_path / "stopped"))
    with pytest.raises(Interrupted):
        run_study(str(path), options)
    study = optuna.load_study(study_name="own_loop-quick", storage=options.storage)
    first = study.trials[0]
    assert first.state.name == "FAIL" and "interrupted" in first.user_attrs["fail_reason"]
    client = MlflowClient(tracking_uri=options.tracking_uri)
    assert client.get_run(first.user_attrs[attrs.RUN_ID]).info.status == "KILLED"

    result = run_study(str(path), options)  # the marker exists: no second Ctrl-C
    assert result.missing == 0 and result.counts == {"FAIL": 1, "COMPLETE": 4, "PRUNED": 2}
    done = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert len({t.user_attrs[attrs.CELL_KEY] for t in done}) == 4 and all(t.value == pytest.approx(0.6) for t in done)
    pruned = [t for t in result.study.trials if t.state.name == "PRUNED"]
    assert {t.params["activation"] for t in pruned} == {"silu"}
    for t in pruned:  # stopped at the epoch Optuna pruned it, before the loop's last one; MLflow says KILLED
        run = client.get_run(t.user_attrs[attrs.RUN_ID])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert run.info.status == "KILLED" and steps == list(range(1, t.last_step + 1)) and t.last_step < 3
    run = client.get_run(done[0].user_attrs[attrs.RUN_ID])
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in history] == [1, 2, 3] and history[-1].value == pytest.approx(done[0].value, abs=1e-5)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/f1")] == [1, 2, 3]
    assert all(0 <= m.value <= 1 for m in client.get_metric_history(run.info.run_id, "val/measured"))
    assert run.data.metrics["final/val_acc"] == pytest.approx(done[0].value, abs=1e-5)
    assert "final/train_loss" in run.data.metrics and run.data.params["model"] == "timm/test_efficientnet"
    assert done[0].intermediate_values[3] == pytest.approx(history[-1].value, abs=1e-5)  # Optuna saw the same
    text = build_report("own_loop", tracking_uri=options.tracking_uri, log_to_mlflow=False)
    assert "4 complete, 2 pruned, 1 failed" in text and "acon_c" in text  # the interrupted trial, as built-in


def test_a_model_fx_cannot_trace_is_refused_naming_the_module_it_failed_in():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # control flow on a tensor's value

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Identity(), Branchy()))
    with pytest.raises(ValueError, match=r"cannot be traced by torch.fx \(in module '2\.1', Branchy\), so its call"):
        list_sites(model, (1, 3, 8, 8))
