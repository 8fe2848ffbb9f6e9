"""The fault table: a study run with two workers under each fault, against an undisturbed run.

Each run starts from empty stores (a fresh Optuna database on the PostgreSQL server, a fresh MLflow
store) and runs ``run STUDY --preset quick --workers 2`` as a user would; ``--at`` seconds in, the
fault is injected for real:

- ``postgres_restart``: ``pg_ctlcluster VERSION NAME restart`` of the server that holds the Optuna study;
- ``tracking_restart``: the MLflow tracking server (SQLite behind it) killed, started again 30 s later;
- ``tracking_on_postgres``: the tracking server killed, the PostgreSQL it uses restarted, the server
  started again 10 s later (the Optuna study is on the same server, so it goes away too);
- ``sigkill_worker``: SIGKILL of one worker process;
- ``sigterm_launcher``: SIGTERM of the launcher, then the same command again (its time is added);
- ``none`` and ``none_server``: undisturbed, MLflow in SQLite / behind a tracking server (SQLite), the
  baselines of the faults above and below;
- ``partition_90s``, ``partition_past_limit``: two ``worker`` processes of a prepared study, one of them on a
  test host of our own (a network namespace, ``tests/_services.Partition``) that reaches PostgreSQL through a
  proxy; its network is cut silently (packets dropped, no reset) for 90 s, or until that worker gives up past
  its ``--outage-limit 60s``; ``none_pair`` is the same pair undisturbed, their baseline. Needs root.

A fault that did not fire (the run ended before ``--at``, no worker to kill) is said so in its row
(``fired`` = no), never reported as survived.

Per fault: exit code, cells complete (each once?), duplicates, lost cells, trials and MLflow runs left
RUNNING, the parent run's status, and the wall time against the undisturbed run. Needs a PostgreSQL
server this user may restart. Usage: ``python benchmarks/faults.py --postgres URL [--cluster "15 main"]
[--faults none,postgres_restart,...] [--at 45]``.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
from studies.store import attrs

ROOT = Path(__file__).resolve().parents[1]
PAIR_FAULTS = ("none_pair", "partition_90s", "partition_past_limit")
FAULTS = ("none", "postgres_restart", "sigkill_worker", "sigterm_launcher", "none_server", "tracking_restart",
          "tracking_on_postgres") + PAIR_FAULTS
#: The undisturbed run each fault is compared with: the same stores, no fault.
BASELINE = {"tracking_restart": "none_server", "tracking_on_postgres": "none_server", "none_server": "none_server",
            **{f: "none_pair" for f in PAIR_FAULTS}}
PAST_LIMIT = "60s"  # the partitioned worker's --outage-limit in partition_past_limit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--postgres", default=os.environ.get("ACON_TEST_POSTGRES_URL"),
                   help="SQLAlchemy URL of a PostgreSQL database whose server may be restarted "
                        "(default $ACON_TEST_POSTGRES_URL)")
    p.add_argument("--cluster", default="15 main", help="pg_ctlcluster VERSION NAME of that server")
    p.add_argument("--study", default="variants")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    p.add_argument("--at", type=float, default=45.0, help="seconds into the run the fault comes (default 45)")
    return p.parse_args(argv)


def _admin(url: str):
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=10)


def fresh_database(url: str) -> str:
    name = f"acon_f_{uuid.uuid4().hex[:10]}"
    with _admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str, db: str) -> None:
    with _admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.rsplit("/", 1)[1]}" WITH (FORCE)')


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """``mlflow server`` on a fixed port of 127.0.0.1, that can be killed and started again."""

    def __init__(self, directory: Path, backend: str):
        self.directory, self.backend, self.port = directory, backend, free_port()
        self.url, self.proc = f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        import urllib.request

        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", self.backend, "--artifacts-destination", str(self.directory / "artifacts"),
               "--workers", "1"]
        log = open(self.directory / "mlflow-server.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def pg_restart(cluster: str) -> None:
    subprocess.run(["pg_ctlcluster", *cluster.split(), "restart"], check=True)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def run_once(args: argparse.Namespace, fault: str) -> dict:
    if fault in PAIR_FAULTS:
        return run_pair(args, fault)
    with tempfile.TemporaryDirectory(prefix="acon-faults-") as tmp:
        tmp = Path(tmp)
        storage = fresh_database(args.postgres)
        tracking_db, server = None, None
        if fault == "tracking_on_postgres":
            tracking_db = fresh_database(args.postgres)
            server = TrackingServer(tmp, tracking_db)
        elif fault in ("tracking_restart", "none_server"):
            server = TrackingServer(tmp, f"sqlite:///{tmp}/mlflow-server.db")
        if server is not None:
            server.start()
        tracking = server.url if server else f"sqlite:///{tmp}/mlflow.db"
        cmd = [sys.executable, "-m", "run_study", "run", args.study, "--preset", "quick", "--workers", "2",
               "--storage", storage, "--tracking-uri", tracking, "--device", "cpu", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = tmp / "run.log"
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stderr=open(log, "w"), stdout=subprocess.DEVNULL, cwd=tmp, env=env)
        try:
            code, fired = inject(args, fault, proc, server, start)
            codes = [code]
            if fault == "sigterm_launcher":  # the user runs the same command again
                again = subprocess.run(cmd, stderr=open(tmp / "rerun.log", "w"), stdout=subprocess.DEVNULL,
                                       cwd=tmp, env=env)
                codes.append(again.returncode)
            wall = time.monotonic() - start
            row = {"fault": fault, "fired": fired, "exit": "/".join(map(str, codes)), "wall_s": round(wall, 1),
                   **count(args.study, storage, tracking),
                   "outage_lines": log.read_text().count("storage unreachable since")}
        finally:
            if proc.poll() is None:
                proc.kill()
            if server is not None:
                server.kill()
            drop_database(args.postgres, storage)
            if tracking_db:
                drop_database(args.postgres, tracking_db)
        if row["exit"].split("/")[-1] != "0":
            row["log"] = log.read_text().strip().splitlines()[-1][:200]
        return row


def inject(args: argparse.Namespace, fault: str, proc: subprocess.Popen, server, start: float) -> tuple[int, str]:
    """Wait ``--at`` s, inject ``fault``, wait for the launcher: its exit code, and whether the fault fired
    (``yes``, ``-`` for no fault, or why not)."""
    while time.monotonic() - start < args.at and proc.poll() is None:
        time.sleep(0.2)
    if proc.poll() is not None:
        return proc.returncode, "-" if fault.startswith("none") else f"no: the run ended at {time.monotonic() - start:.0f} s"
    fired = "-" if fault.startswith("none") else "yes"
    if fault == "postgres_restart":
        pg_restart(args.cluster)
    elif fault == "tracking_restart":
        server.kill()
        time.sleep(30)
        server.start()
    elif fault == "tracking_on_postgres":
        server.kill()
        pg_restart(args.cluster)
        time.sleep(10)
        server.start()
    elif fault == "sigkill_worker":
        workers = children(proc.pid)
        if workers:
            os.kill(workers[0], signal.SIGKILL)
        else:
            fired = "no: no worker process to kill"
    elif fault == "sigterm_launcher":
        proc.send_signal(signal.SIGTERM)
    return proc.wait(), fired


def run_pair(args: argparse.Namespace, fault: str) -> dict:
    """Two workers of a prepared study, one on a test host behind a proxy; ``--at`` s in, that host's network is
    cut silently (``partition_*``) or not (``none_pair``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from _services import Partition, TcpProxy
    from sqlalchemy.engine import make_url

    from studies.run.options import RunOptions
    from studies.run.launch import prepare_study

    why = Partition.available()
    if why:
        return {"fault": fault, "fired": f"no: {why}"}
    partition = Partition()
    storage = fresh_database(args.postgres)
    target = make_url(storage)
    proxy = TcpProxy(target.host, target.port, bind=partition.host_ip)
    procs: dict[str, subprocess.Popen] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="acon-faults-") as tmp:
            tmp = Path(tmp)
            tracking = f"sqlite:///{tmp}/mlflow.db"
            prepare_study(args.study, RunOptions(storage=storage, tracking_uri=tracking, progress=False))
            cmd = [sys.executable, "-m", "run_study", "worker", args.study, "--preset", "quick", "--tracking-uri",
                   tracking, "--device", "cpu", "--no-progress", "--threads", "1", "--storage"]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            limit = ["--outage-limit", PAST_LIMIT] if fault == "partition_past_limit" else []
            start = time.monotonic()
            logs = {w: open(tmp / f"{w}.log", "w") for w in ("cut_off", "others")}
            procs.update(cut_off=subprocess.Popen([*partition.prefix(), *cmd, proxy.url(storage), *limit], cwd=tmp,
                                                 env=env, stderr=logs["cut_off"], stdout=subprocess.DEVNULL),
                         others=subprocess.Popen([*cmd, storage], cwd=tmp, env=env, stderr=logs["others"],
                                                 stdout=subprocess.DEVNULL))
            fired, gave_up = _partition(args, fault, partition, procs, start)
            codes = [procs[w].wait() for w in ("cut_off", "others")]
            wall = time.monotonic() - start
            row = {"fault": fault, "fired": fired, "exit": "/".join(map(str, codes)), "wall_s": round(wall, 1),
                   **count(args.study, storage, tracking),
                   "outage_lines": (tmp / "cut_off.log").read_text().count("storage unreachable since"),
                   "late": (tmp / "cut_off.log").read_text().count("late result"),
                   "stale_said": (tmp / "others.log").read_text().count("failed: its worker stopped sending heartbeats"),
                   "gave_up_s": gave_up}
            if codes[0] != 0:
                row["log"] = (tmp / "cut_off.log").read_text().strip().splitlines()[-1][:200]
    finally:
        partition.heal()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        proxy.cut()
        partition.close()
        drop_database(args.postgres, storage)
    return row


def _partition(args: argparse.Namespace, fault: str, partition, procs: dict, start: float) -> tuple[str, float | None]:
    """Cut the test host's network ``--at`` s in, for 90 s or until its worker gives up: whether it fired, and
    how many seconds after the cut the cut-off worker gave up (past_limit)."""
    while time.monotonic() - start < args.at and all(p.poll() is None for p in procs.values()):
        time.sleep(0.2)
    if fault == "none_pair":
        return "-", None
    if any(p.poll() is not None for p in procs.values()):
        return f"no: a worker ended at {time.monotonic() - start:.0f} s", None
    partition.cut()
    cut = time.monotonic()
    gave_up = None
    if fault == "partition_90s":
        time.sleep(90)
    else:
        procs["cut_off"].wait(timeout=600)  # it must give up by itself while the network is still cut
        gave_up = round(time.monotonic() - cut, 1)
    partition.heal()
    return "yes", gave_up


def count(study: str, storage: str, tracking: str) -> dict:
    """Cells done once, duplicated and lost; trials and runs left RUNNING; the parent's status."""
    import optuna
    from mlflow import MlflowClient

    from studies.run.options import RunOptions
    from studies.run.launch import resolve

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resolved = resolve(study, RunOptions())
    cells = len(resolved.spec.cells(resolved.settings))
    trials = optuna.load_study(study_name=f"{study}-quick", storage=storage).trials
    done = [attrs.key_of(t) for t in trials if t.state.name == "COMPLETE"]
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id], max_results=500)
    parents = [r.info.status for r in runs if r.data.tags.get("acon.role") == "parent"]
    return {"cells": f"{len(set(done))}/{cells}", "duplicated": len(done) - len(set(done)),
            "lost": cells - len(set(done)), "trials_running": sum(t.state.name == "RUNNING" for t in trials),
            "trials_failed": sum(t.state.name == "FAIL" and not attrs.is_spurious(t) for t in trials),
            "runs_running": sum(r.info.status == "RUNNING" and r.data.tags.get("acon.role") == "trial" for r in runs),
            "parent": "/".join(parents)}


def main(argv=None) -> None:
    args = parse_args(argv)
    # SIGTERM (a `timeout`, a scheduler) unwinds like Ctrl-C: the finally blocks drop the databases, stop the
    # servers and remove a partition's network namespace
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.postgres:
        sys.exit("error: --postgres URL (or $ACON_TEST_POSTGRES_URL) is needed")
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        sys.exit(f"error: unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    rows = []
    for fault in faults:
        rows.append(run_once(args, fault))
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    walls = dict(zip(table.fault, table.wall_s))
    table.insert(3, "vs_undisturbed", [round(w / walls[BASELINE.get(f, "none")], 2)
                                       if BASELINE.get(f, "none") in walls else None
                                       for f, w in zip(table.fault, table.wall_s)])
    print()
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
