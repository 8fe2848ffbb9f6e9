"""The command line: one line and a non-zero exit on bad input, SIGTERM mid-trial, resume, user study files."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import optuna
import pytest


ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "run_study.py")]


def clean_env() -> dict[str, str]:
    """This environment without store overrides (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("ACON_STORAGE", None)
    return env


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


BUILT_IN = {
    "studies": {"design_space", "reduction_ratio", "placement", "variants", "hpo", "rivals", "dynamic",
                "rival_options"},
    "generators": {"layer", "channel", "pixel", "learned", "fixed"},
    "placements": {"all", "none", "bottleneck_3x3", "last_stage", "first", "last", "stage", "glob"},
    "activations": {"relu", "leaky_relu", "prelu", "silu", "swish", "mish", "gelu", "identity",
                    "acon_a", "acon_b", "acon_c", "meta_acon", "se_control",
                    "dy_relu_a", "dy_relu_b", "dy_relu_c", "frelu", "pau", "smu", "smu1", "apa"},
    "datasets": {"mnist5k", "digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "imagefolder"},
}


BAD_INPUT = [
    (["run", "no_such_study"], "unknown study 'no_such_study'"),
    (["run", "design_space", "--model", "resnet5"], "unknown model 'resnet5'"),
    (["run", "design_space", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["run", "design_space", "--epochs", "0"], "epochs must be an integer in 1..10000"),
    (["run", "design_space", "--lr", "-1"], "lr must be in (0.0, inf], got -1.0"),
    (["run", "design_space", "--preset", "huge"], "unknown preset 'huge'"),
    (["run", "design_space", "--threads", "0"], "threads must be an integer >= 1, got 0"),
    (["run", "design_space", "--max-trials", "-1"], "max_trials must be an integer >= 0, got -1"),
    (["run", "design_space", "--workers", "2", "--threads", "0"], "threads must be an integer >= 1, got 0"),
    (["run", "design_space", "--dataset", "cifar10", "--data-dir", "nowhere"], "--download"),
    (["overhead", "--model", "tiny_cnn", "--r", "x"], "--r takes integers"),
    (["report", "no_such_study"], "no_such_study"),
    (["run", "design_space", "--tracking-uri", "sqlite:////proc/nope/m.db"], "cannot reach MLflow tracking store"),
    (["run", "design_space", "--storage", "o.journal", "--tracking-uri", "sqlite:////proc/nope/m.db"],
     "cannot reach MLflow tracking store"),
    (["report", "design_space", "--plots", "--storage", "sqlite:///nothere.db"], "no Optuna storage at nothere.db"),
]


def in_process(args: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    """``run_study.main(args)`` in this process, in ``cwd``, without store overrides, its output captured;
    the working directory and the environment (``mlflow.set_tracking_uri`` exports a variable) are put back."""
    import contextlib
    import io

    import run_study

    env, here = dict(os.environ), Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("ACON_STORAGE", None)
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run_study.main(list(args))
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(env)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def quick_commands(tmp_path_factory):
    """The ``list`` and bad-input commands below, each in its own empty folder, through ``run_study.main`` in
    this process (the start-up of a real process is covered by the subprocess tests further down).
    Maps the arguments to (folder, finished command)."""
    commands = [("list", what) for what in sorted(BUILT_IN)] + [tuple(args) for args, _ in BAD_INPUT]
    cwds = [tmp_path_factory.mktemp("cli") for _ in commands]
    return {args: (cwd, in_process(args, cwd)) for args, cwd in zip(commands, cwds)}


@pytest.mark.parametrize("what", sorted(BUILT_IN))
def test_list_prints_every_built_in_name_sorted_with_help(what, quick_commands):
    _, proc = quick_commands[("list", what)]
    assert proc.returncode == 0
    rows = [line.split(maxsplit=1) for line in proc.stdout.splitlines()]
    names = [r[0] for r in rows]
    assert names == sorted(set(names)) and set(names) == BUILT_IN[what]
    assert all(len(r) == 2 and r[1].strip() for r in rows)  # every name has a one-line help


@pytest.mark.parametrize("args, expected", BAD_INPUT)
def test_bad_input_prints_one_line_and_exits_non_zero_leaving_no_study(args, expected, quick_commands):
    cwd, proc = quick_commands[tuple(args)]
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith("error: ") and expected in line
    assert sorted(p.name for p in cwd.iterdir()) == []  # no store, not even an empty one


def test_device_cuda_where_there_is_none_is_refused_before_any_store(tmp_path):
    """It ran every cell as a failed trial (each one failing on the device) and left the stores behind."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    proc = in_process(("run", "design_space", "--device", "cuda"), tmp_path)
    assert proc.returncode == 2 and "CUDA is not available here" in error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_tracking_server_is_one_line_and_creates_no_study(tmp_path):
    proc = cli("run", "design_space", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot reach MLflow tracking store http://127.0.0.1:9" in error_line(proc)
    assert list(tmp_path.iterdir()) == []  # not even the Optuna storage file that was opened first


@pytest.mark.parametrize("args", [["run", "--help"], ["worker", "--help"], ["run", "no_such_study"],
                                  ["worker", "no_such_study", "--epochs", "2"]])
def test_help_and_an_unknown_study_answer_without_loading_torch_or_mlflow(args, tmp_path):
    """They answer in well under a second: torch, torchvision and MLflow (2-9 s to import) stay unloaded."""
    probe = ("import runpy, sys; sys.argv = ['run_study.py', *sys.argv[1:]]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print(sorted({'torch', 'torchvision', 'mlflow', 'pandas'} & set(sys.modules)), e.code)")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    expected_code = 0 if "--help" in args else 2
    assert proc.stdout.splitlines()[-1] == f"[] {expected_code}", proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["list", "run", "worker", "report", "overhead", "storage-proxy"])
def test_every_subcommand_has_help(command, capsys):
    # in-process: the CLI's start-up is covered by the subprocess tests above; this pins the help text
    import run_study

    with pytest.raises(SystemExit) as exit_:
        run_study.main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: run_study.py {command}" in capsys.readouterr().out


USER_STUDY = """
from studies import Study
STUDY = Study(
    name="my_study",
    doc="A user's own study in their own file.",
    designs=({"activation": "relu", "placement": "all"}, {"activation": "acon_c", "placement": "all"}),
    fixed={"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": EPOCHS, "seeds": 1, "batch_size": 32},
)
"""


# A user file may register its own activation; this one sleeps so a trial is slow on any machine.
SLOW_STUDY = """
import time
import torch
from acon import ACTIVATIONS
from studies import Study

class SlowReLU(torch.nn.Module):
    def forward(self, x):
        time.sleep(0.02)
        return torch.relu(x)

ACTIVATIONS.register("slow_relu", lambda channels, **_: SlowReLU(), override=True)
STUDY = Study(
    name="my_study",
    doc="Two slow designs, so that a signal lands in the middle of a trial.",
    designs=({"activation": "slow_relu", "placement": "all"}, {"activation": "relu", "placement": "all"}),
    fixed={"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": 3, "seeds": 1, "batch_size": 32},
)
"""


def write_study(tmp_path: Path, epochs: int, text: str = USER_STUDY) -> Path:
    path = tmp_path / "my_study.py"
    path.write_text(textwrap.dedent(text).replace("EPOCHS", str(epochs)))
    return path


def running_trial_with_an_epoch(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=1) as con:
            row = con.execute("select count(*) from trials t join trial_intermediate_values v on t.trial_id = v.trial_id "
                              "where t.state = 'RUNNING'").fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return False
    return row[0] > 0


def test_sigterm_mid_trial_records_it_and_the_same_command_resumes_to_completion(tmp_path):
    study_file = write_study(tmp_path, epochs=3, text=SLOW_STUDY)
    proc = subprocess.Popen([*CLI, "run", str(study_file), "--no-progress"], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not running_trial_with_an_epoch(tmp_path / "optuna.db"):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to resume" in err, err

    storage = f"sqlite:///{tmp_path}/optuna.db"
    first = optuna.load_study(study_name="my_study-quick", storage=storage)
    states = [t.state.name for t in first.trials]
    # on a loaded machine the first trial may finish before the signal lands: then the second is cut
    assert states in (["FAIL", "WAITING"], ["COMPLETE", "FAIL"]), states
    cut = next(t for t in first.trials if t.state.name == "FAIL")
    assert "interrupted" in cut.user_attrs["fail_reason"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["my_study"])
    status = dict(zip(runs["run_id"], runs["status"]))
    assert status[cut.user_attrs["mlflow_run_id"]] == "KILLED"
    assert list(runs[runs["tags.acon.role"] == "parent"]["status"]) == ["KILLED"]

    done = cli("run", str(study_file), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="my_study-quick", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    cells = sorted(t.params["activation"] for t in study.trials if t.state.name == "COMPLETE")
    assert cells == ["relu", "slow_relu"]
    runs = mlflow.search_runs(experiment_names=["my_study"])
    assert sorted(runs["status"]) == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]
    assert len(runs[runs["tags.acon.role"] == "parent"]) == 1


def test_a_users_study_file_runs_end_to_end_and_reports(tmp_path):
    study_file = write_study(tmp_path, epochs=1)
    proc = cli("run", str(study_file), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "complete 2" in proc.stdout and "acon_c/all" in proc.stdout
    rep = cli("report", "my_study", "--format", "markdown,csv", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").glob("*.csv"))


def test_a_user_error_is_one_line_and_exit_2_while_a_bug_keeps_its_traceback_and_exits_1(tmp_path):
    def with_list_raising(exc: str) -> subprocess.CompletedProcess:
        code = (f"import sys, run_study\nfrom studies.errors import UserError\n"
                f"def boom(args): raise {exc}\nrun_study.cmd_list = boom\nsys.exit(run_study.main(['list']))")
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True,
                              text=True, timeout=300)

    user = with_list_raising("UserError('no such thing; valid choices: a, b')")
    assert user.returncode == 2 and error_line(user) == "error: no such thing; valid choices: a, b"
    bug = with_list_raising("RuntimeError('a bug')")
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and bug.stderr.strip().endswith("RuntimeError: a bug")


def test_every_declared_setting_is_a_flag_of_run_and_worker(capsys):
    from run_study import build_parser
    from studies.settings import FIELDS, flag

    parser = build_parser()
    for command in ("run", "worker"):
        args = parser.parse_args([command, "x", "--batch-size", "32", "--no-augment", "--trials", "4", "--lr", "0.5"])
        assert (args.batch_size, args.augment, args.n_trials, args.lr, args.epochs) == (32, False, 4, 0.5, None)
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        help_text = capsys.readouterr().out
        assert all(flag(f) in help_text for f in FIELDS)


def test_a_misspelt_setting_in_a_users_study_file_is_one_line_naming_the_valid_settings(tmp_path):
    study_file = write_study(tmp_path, epochs=1, text=USER_STUDY.replace('"batch_size"', '"batchsize"'))
    proc = cli("run", str(study_file), cwd=tmp_path)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "unknown setting 'batchsize' in the fixed settings of study 'my_study'" in line
    assert "valid settings: act_every, act_images, amp, augment, batch_size, " in line
    assert not (tmp_path / "optuna.db").exists()
