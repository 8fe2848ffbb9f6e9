"""Many workers on one PostgreSQL, directly and through the gRPC storage proxy: rate, overhead, connections, losses.

For each worker count N and each mode (``direct``: every worker on ``postgresql://``; ``proxy``: every worker on
``grpc://`` to one ``run_study.py storage-proxy``), a fresh database gets the grid of ``benchmarks/sleep_study.py``
(4*N cells: its loop sleeps ``--sleep`` s and trains nothing) queued by ``run --max-trials 0``, then N
``run_study.py worker`` processes are started at once and waited for. MLflow is a tracking server (SQLite behind it),
so the workers' only PostgreSQL connections are the Optuna storage's.

Per row: cells per second (cells / the span from the first trial's start to the last one's end, Optuna's times), the
toolkit's own overhead per trial (measured inside each worker: from its loop returning to its next loop call, which
covers telling the result, closing the MLflow run, the stale-trial check, claiming the next trial, its MLflow run and
model; p50 and p95 over all workers), peak connections to the study's database and to the whole server (from
``pg_stat_activity`` every 0.2 s), cells duplicated and lost, failed trials, workers that exited non-zero, and the
outage lines the workers printed (a call retried: ``too many clients`` is one). Usage: ``python
benchmarks/many_workers.py --postgres URL [--workers 8,16,32] [--modes direct,proxy] [--sleep 0.2]``.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from faults import ROOT, TrackingServer, _admin, drop_database, free_port, fresh_database
from studies.store.proxy_client import open_proxy

STUDY_FILE = str(ROOT / "benchmarks" / "sleep_study.py")
CELLS_PER_WORKER = 4  # the study has 2 designs: seeds = 2 per worker
POLL_SECONDS = 0.2
TIMEOUT = 900.0  # seconds a run may take before its workers are killed (and the row says so)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options: server, worker counts, modes, loop sleep."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--postgres", default=os.environ.get("ACON_TEST_POSTGRES_URL"),
                   help="SQLAlchemy URL of a PostgreSQL database; each run gets a fresh database beside it "
                        "(default $ACON_TEST_POSTGRES_URL)")
    p.add_argument("--workers", default="8,16,32", help="comma-separated worker counts (default 8,16,32)")
    p.add_argument("--modes", default="direct,proxy", help="direct, proxy or both (default both)")
    p.add_argument("--sleep", type=float, default=0.2, help="seconds each trial's loop sleeps (default 0.2)")
    p.add_argument("--proxy-threads", type=int, default=10, help="the proxy's threads (default 10)")
    p.add_argument("--proxy-nice", type=int, default=0,
                   help="the proxy's nice value (default 0; negative needs root): one process serving N workers gets "
                        "1/(N+1) of a busy machine's CPU, where a cluster gives its task cores of its own")
    return p.parse_args(argv)


class ConnectionPeak:
    """Polls ``pg_stat_activity`` in a thread: the most client connections seen to one database and to the server."""

    def __init__(self, admin_url: str, database: str):
        self.admin_url, self.database = admin_url, database
        self.peak_db = self.peak_server = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "ConnectionPeak":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _poll(self) -> None:
        with _admin(self.admin_url) as conn:
            while not self.stop.wait(POLL_SECONDS):
                rows = conn.execute("SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                    "AND pid <> pg_backend_pid() GROUP BY datname").fetchall()
                self.peak_db = max(self.peak_db, sum(n for name, n in rows if name == self.database))
                self.peak_server = max(self.peak_server, sum(n for _, n in rows))


def run_once(args: argparse.Namespace, mode: str, workers: int) -> dict:
    """One row: N workers on a fresh database, directly or through a fresh proxy."""
    with tempfile.TemporaryDirectory(prefix="acon-many-") as tmp:
        tmp = Path(tmp)
        database = fresh_database(args.postgres)
        server, proxy = TrackingServer(tmp, f"sqlite:///{tmp}/mlflow-server.db"), None
        try:
            server.start()
            storage = database
            if mode == "proxy":
                port = free_port()
                proxy = _start(["storage-proxy", "--storage", database, "--port", str(port), "--threads",
                                str(args.proxy_threads)], tmp / "proxy.log", nice=args.proxy_nice)
                storage = f"grpc://127.0.0.1:{port}"
                open_proxy(storage, timeout=120).close()  # it answers once it listens
            common = ["--storage", storage, "--tracking-uri", server.url, "--device", "cpu", "--no-progress",
                      "--seeds", str(CELLS_PER_WORKER * workers // 2)]
            queued = _start(["run", STUDY_FILE, "--max-trials", "0", *common], tmp / "queue.log")  # waits for the proxy
            if queued.wait(timeout=300) != 0:
                raise RuntimeError(f"queueing failed: {_tail(tmp / 'queue.log')}")
            env = {"ACON_SLEEP_SECONDS": str(args.sleep), "ACON_SLEEP_LOG": str(tmp / "loops.log")}
            with ConnectionPeak(args.postgres, database.rsplit("/", 1)[1]) as peak:
                start = time.monotonic()
                procs = [_start(["worker", STUDY_FILE, "--threads", "1", *common], tmp / f"worker{i}.log", **env)
                         for i in range(workers)]
                codes = _wait_all(procs)
                wall = time.monotonic() - start
            logs = "\n".join((tmp / f"worker{i}.log").read_text(errors="replace") for i in range(workers))
            return {"workers": workers, "mode": mode if mode == "direct" or not args.proxy_nice else
                    f"proxy (nice {args.proxy_nice})", "wall_s": round(wall, 1),
                    **_cells(database, workers), **_overhead(tmp / "loops.log", args.sleep),
                    "peak_conns_db": peak.peak_db, "peak_conns_server": peak.peak_server,
                    "workers_failed": sum(c != 0 for c in codes),
                    "outage_lines": logs.count("storage unreachable since"),
                    "too_many_clients": logs.count("too many clients"),
                    "errors": " | ".join(sorted({_tail(tmp / f"worker{i}.log")[:160] for i, c in enumerate(codes) if c}))}
        finally:
            if proxy is not None:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(timeout=30)
            server.kill()
            drop_database(args.postgres, database)


def _start(args: list[str], log: Path, nice: int = 0, **env: str) -> subprocess.Popen:
    """``run_study.py ARGS`` in the background, stderr to ``log``, one torch thread, at ``nice``."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "run_study", *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=full, cwd=ROOT, preexec_fn=(lambda: os.nice(nice)) if nice else None)


def _wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """Each worker's exit code; any still running after ``TIMEOUT`` s is killed (its code: -9)."""
    deadline = time.monotonic() + TIMEOUT
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [p.returncode for p in procs]


def _cells(database: str, workers: int) -> dict:
    """Cells done, duplicated and lost, failed trials and the rate, read straight from the database."""
    import optuna

    storage = optuna.storages.RDBStorage(database)
    trials = optuna.load_study(study_name="sleep-quick", storage=storage).trials
    storage.engine.dispose()  # before the database is dropped
    done = Counter(t.user_attrs.get("cell_key") for t in trials if t.state.name == "COMPLETE")
    cells = CELLS_PER_WORKER * workers
    timed = [t for t in trials if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in timed) - min(t.datetime_start for t in timed)).total_seconds() if timed else 0
    return {"cells": cells, "complete": len(done), "duplicated": sum(n - 1 for n in done.values()),
            "lost": cells - len(done), "failed_trials": sum(t.state.name == "FAIL" and not t.user_attrs.get("spurious")
                                                           for t in trials),
            "left_running": sum(t.state.name in ("RUNNING", "WAITING") for t in trials),
            "cells_per_s": round(len(done) / span, 2) if span else 0.0}


def _overhead(log: Path, sleep: float) -> dict:
    """p50/p95 ms of the toolkit's time per trial inside each worker: its loop's return to its next call."""
    calls: dict[str, list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        pid, start, end = line.split()
        calls.setdefault(pid, []).append((float(start), float(end)))
    gaps = pd.Series([b[0] - a[1] for spans in calls.values() for a, b in zip(sorted(spans), sorted(spans)[1:])])
    loop = pd.Series([e - s for spans in calls.values() for s, e in spans])
    if gaps.empty:
        return {"overhead_p50_ms": None, "overhead_p95_ms": None, "loop_p50_ms": None}
    return {"overhead_p50_ms": round(1000 * gaps.quantile(0.5)), "overhead_p95_ms": round(1000 * gaps.quantile(0.95)),
            "loop_p50_ms": round(1000 * loop.quantile(0.5))}


def _tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def main(argv=None) -> pd.DataFrame:
    """Each worker count in each mode, one after the other; the table in Markdown."""
    args = parse_args(argv)
    if not args.postgres:
        raise SystemExit("needs a PostgreSQL: --postgres URL or $ACON_TEST_POSTGRES_URL (source .ci/services.sh)")
    rows = []
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            rows.append(run_once(args, mode, workers))
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
