"""Helpers for the scale-out tests: tiny study files, the CLI in a subprocess, real services.

PostgreSQL comes from ``$ACON_TEST_POSTGRES_URL`` (exported by ``.ci/services.sh``); each test
gets a fresh database of its own and drops it after. The MLflow server is a real
``mlflow server`` process on a free port of 127.0.0.1.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "ACON_TEST_POSTGRES_URL"
TINY = {"model": "tiny_cnn", "dataset": "digits", "limit": 240, "epochs": 2, "seeds": 2, "batch_size": 64}
RELU = {"activation": "relu", "placement": "all"}
ACON_C = {"activation": "acon_c", "placement": "all"}
HANG = {"activation": "test_hang", "placement": "all"}
SLOW = {"activation": "test_slow", "placement": "all"}
CRASH = {"activation": "test_dies", "placement": "all"}

_STUDY_FILE = '''
import os, sys, time
import torch
from torch import nn
from acon import ACTIVATIONS
from studies.spec import Study


class Hang(nn.Module):
    """ReLU, except that the first process to create $ACON_TEST_HANG_FILE writes its pid there and hangs."""

    def forward(self, x):
        marker = os.environ.get("ACON_TEST_HANG_FILE")
        if marker:
            try:
                os.close(os.open(marker + ".lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # one process only
            except FileExistsError:
                return torch.relu(x)
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(marker + ".tmp", marker)  # readers see the pid whole or not at all
            while True:
                time.sleep(1)
        return torch.relu(x)


class Slow(nn.Module):
    """ReLU that sleeps $ACON_TEST_SLOW seconds per call: trials that last long enough to meet a fault."""

    def forward(self, x):
        time.sleep(float(os.environ.get("ACON_TEST_SLOW", "0")))
        return torch.relu(x)


class Crash(nn.Module):
    """A bug that takes its worker down (not an error its trial records): a last line, then exit code 3."""

    def forward(self, x):
        print("test_dies: the worker's last words", file=sys.stderr, flush=True)
        os._exit(3)


ACTIVATIONS.register("test_hang", lambda channels, **_: Hang(), override=True)
ACTIVATIONS.register("test_dies", lambda channels, **_: Crash(), override=True)
ACTIVATIONS.register("test_slow", lambda channels, **_: Slow(), override=True)
STUDY = Study(name={name!r}, doc="a tiny scale-out test study", designs={designs!r}, fixed={fixed!r})
'''


def write_study(directory: Path, name: str, designs: tuple[dict, ...] = (RELU, ACON_C), **fixed: Any) -> str:
    """Write a study file that worker processes can load; return its path."""
    path = Path(directory) / f"{name}.py"
    path.write_text(_STUDY_FILE.format(name=name, designs=tuple(designs), fixed={**TINY, **fixed}))
    return str(path)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: the repository importable, no inherited stores."""
    env = {k: v for k, v in os.environ.items() if k not in ("ACON_STORAGE", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run ``run_study.py ARGS`` in a subprocess and wait for it."""
    return subprocess.run([sys.executable, "-m", "run_study", *args], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env), cwd=ROOT)


def cli_all(*commands: tuple[str, ...], timeout: float = 300, cwds: list[Path] | None = None) -> list[subprocess.CompletedProcess]:
    """Run several ``run_study.py`` commands at once (their start-ups overlap), each in its folder of
    ``cwds`` (default the repository); results in order. Any still running on an error is killed."""
    cwds = cwds or [ROOT] * len(commands)
    procs = [subprocess.Popen([sys.executable, "-m", "run_study", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=cwd) for args, cwd in zip(commands, cwds)]
    results = []
    try:
        for args, proc in zip(commands, procs):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def cli_start(*args: str, log: Path, inside: "Partition | None" = None, **env: str) -> subprocess.Popen:
    """Start ``run_study.py ARGS`` in the background, stderr to ``log``; ``inside`` a partition's test host."""
    prefix = inside.prefix() if inside is not None else []
    return subprocess.Popen([*prefix, sys.executable, "-m", "run_study", *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=cli_env(**env), cwd=ROOT)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ---------------------------------------------------------------------------------

def postgres_url() -> str:
    """The test server's URL, or skip the test with the reason."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"${POSTGRES_ENV} is not set: source .ci/services.sh to start PostgreSQL (CI does)")
    return url


def _admin(url: str):
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=10)


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url`` (dropped after); yields its SQLAlchemy URL."""
    name = f"acon_t_{uuid.uuid4().hex[:12]}"
    with _admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        _drop(url, name)


def _drop(url: str, name: str, attempts: int = 5) -> None:
    """Drop a test database, its connections forced off; a server that will not stop one of them (an autovacuum
    worker, where the test role lacks pg_signal_backend) is asked again a few times as that worker ends."""
    import psycopg

    for attempt in range(attempts):
        try:
            with _admin(url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except psycopg.errors.InsufficientPrivilege:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def table_names(url: str) -> set[str]:
    """The tables of the public schema of the database at ``url``."""
    with _admin(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


class TcpProxy:
    """A TCP proxy from a free port of ``bind`` (127.0.0.1) to ``host:port`` that a test controls: ``cut()`` drops
    every connection (a reset, as when a server dies) and refuses new ones until ``restore()``. Put in front of
    PostgreSQL, it is a database restart, a failover or a dropped network, for real: the clients see what
    they would. (A silent network, with no reset, is ``Partition``'s.)"""

    def __init__(self, host: str, port: int, bind: str = "127.0.0.1"):
        import threading

        self.target, self.port, self.bind = (host, port), free_port(), bind
        self.lock, self.live, self.server = threading.Lock(), set(), None
        self.connections = 0  # accepted so far
        self.restore()

    def url(self, url: str) -> str:
        """``url`` (SQLAlchemy) pointed at the proxy instead of the server."""
        from sqlalchemy.engine import make_url

        return make_url(url).set(host=self.bind, port=self.port).render_as_string(hide_password=False)

    def restore(self) -> None:
        import threading

        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.bind, self.port))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        import struct

        with self.lock:
            try:  # new connections are refused: nothing listens on the port (shutdown wakes the blocked accept)
                self.server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.server.close()
            for s in self.live:
                try:  # shutdown wakes the pump blocked on it (a bare close would not), close then resets
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.live.clear()

    def _accept(self, server: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                if server is not self.server or self.server.fileno() == -1:  # cut while this one was connecting
                    client.close()
                    upstream.close()
                    return
                self.live.update((client, upstream))
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
            with self.lock:
                self.live.discard(s)


class Partition:
    """A test host of our own: a network namespace joined to this one by a veth pair. Processes started inside it
    (``prefix()``) reach this host at ``host_ip``. ``cut()`` takes the link down: from then on packets are
    dropped without a reset or an answer, as in a real partition (a switch gone, a cable pulled); TCP on
    either side learns nothing until its own timeouts fire. Static neighbour entries keep ARP off the link, so
    a connection attempt during the cut times out instead of failing fast with 'no route'. ``heal()`` brings the
    link back. Needs root and iproute2 (``available()`` says why not)."""

    def __init__(self):
        import random

        # a link left by a killed run (its namespace too) would make ``ip link add`` fail: take a free number
        k = next(k for k in random.sample(range(1, 250), 249) if not Path(f"/sys/class/net/acph{k}").exists())
        self.ns, self.veth, self.peer = f"acon_p{os.getpid() % 100000}_{k}", f"acph{k}", f"acpp{k}"
        self.host_ip, self.peer_ip = f"10.231.{k}.1", f"10.231.{k}.2"
        ip = self._ip
        ip("netns", "add", self.ns)
        try:
            ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
            ip("link", "set", self.peer, "netns", self.ns)
            ip("addr", "add", f"{self.host_ip}/24", "dev", self.veth)
            ip("link", "set", self.veth, "up")
            inside = ("netns", "exec", self.ns, "ip")
            ip(*inside, "addr", "add", f"{self.peer_ip}/24", "dev", self.peer)
            ip(*inside, "link", "set", self.peer, "up")
            ip(*inside, "link", "set", "lo", "up")
            mac = Path(f"/sys/class/net/{self.veth}/address").read_text().strip()
            peer_mac = subprocess.run(["ip", "netns", "exec", self.ns, "cat", f"/sys/class/net/{self.peer}/address"],
                                      capture_output=True, text=True, check=True).stdout.strip()
            ip(*inside, "neigh", "replace", self.host_ip, "lladdr", mac, "dev", self.peer, "nud", "permanent")
            ip("neigh", "replace", self.peer_ip, "lladdr", peer_mac, "dev", self.veth, "nud", "permanent")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def available() -> str | None:
        """None where partitions can be made here, else why not."""
        import shutil

        if os.geteuid() != 0:
            return "a network partition needs root (ip netns)"
        if shutil.which("ip") is None:
            return "a network partition needs iproute2's ip"
        probe = subprocess.run(["ip", "netns", "add", f"acon_probe{os.getpid()}"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"cannot make a network namespace here: {probe.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", f"acon_probe{os.getpid()}"], capture_output=True)
        return None

    def prefix(self) -> list[str]:
        """The command prefix that runs a process inside the partition's test host."""
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        self._ip("link", "set", self.veth, "down")

    def heal(self) -> None:
        self._ip("link", "set", self.veth, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


# -- MLflow server ------------------------------------------------------------------------------

@contextmanager
def mlflow_server(directory: Path, backend: str | None = None) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend in ``directory`` by default); yields its URL."""
    port = free_port()
    backend = backend or f"sqlite:///{directory}/mlflow-server.db"
    log = open(Path(directory) / "mlflow-server.log", "w")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(Path(directory) / "artifacts"),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or _healthy(url), 90, "mlflow server", poll=0.3)
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(Path(directory) / 'mlflow-server.log').read_text()[-2000:]}")
        yield url
    finally:
        _stop_group(proc)
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rest(url: str, endpoint: str, payload: dict | None = None, **query: str) -> dict:
    """Call the MLflow REST API: POST ``payload`` as JSON, else GET with ``query``."""
    full = f"{url}/api/2.0/mlflow/{endpoint}"
    if payload is None:
        full += "?" + urllib.parse.urlencode(query) if query else ""
        request = urllib.request.Request(full)
    else:
        request = urllib.request.Request(full, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())

