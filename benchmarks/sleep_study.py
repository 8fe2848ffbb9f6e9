"""A study file whose own training loop trains nothing: it sleeps and returns, so a run measures the toolkit.

Each trial still goes through everything of the toolkit's (claim, model built, MLflow run, result told); only
training is a ``time.sleep($ACON_SLEEP_SECONDS)`` (default 0.2 s). With ``$ACON_SLEEP_LOG`` set, each call appends
``pid start end`` (wall-clock seconds) to that file, so a benchmark can measure the time between trials inside each
worker. Used by ``benchmarks/many_workers.py`` and the storage proxy's tests: ``run_study.py run
benchmarks/sleep_study.py --seeds N`` runs 2*N cells.
"""
import os
import time

from studies.spec import Study


def sleep(model, data, settings, tracker):
    """The loop: one epoch that sleeps, then a fixed objective."""
    start = time.time()
    time.sleep(float(os.environ.get("ACON_SLEEP_SECONDS", "0.2")))
    tracker.log_epoch(1, val_acc=0.5)
    log = os.environ.get("ACON_SLEEP_LOG")
    if log:
        with open(log, "a") as f:  # one short line per write: appends of several processes do not interleave
            f.write(f"{os.getpid()} {start:.6f} {time.time():.6f}\n")
    return {"val_acc": 0.5}


STUDY = Study(
    name="sleep",
    doc="trains nothing: each trial sleeps, to measure what the toolkit itself costs per trial",
    designs=({"activation": "relu", "placement": "all"}, {"activation": "acon_c", "placement": "all"}),
    fixed={"model": "tiny_cnn", "dataset": "digits", "limit": 40, "epochs": 1, "seeds": 2, "act_images": 0},
    train=sleep,
)
