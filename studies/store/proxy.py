"""Many workers, one connection pool: Optuna's gRPC storage proxy served in front of the study's database.

``serve_proxy`` is ``run_study.py storage-proxy`` (and what a cluster launcher runs as a task of its own); workers
reach it as ``--storage grpc://HOST:PORT`` (``studies.store.proxy_client``). The proxy does not ride database
outages itself: it answers UNAVAILABLE while the database is away, and the workers ride that as they ride a dead
proxy. Its cache (Optuna's) keeps finished trials only, so a restarted proxy serves no stale trial state.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

import optuna

from studies.errors import UserError, first_line
from studies.store.outage import describe_failure, is_transient, say
from studies.store.proxy_client import is_proxy, require_grpc
from studies.store.storage import StorageError, mask_url, open_storage

#: Threads of the proxy, hence at most as many database connections in use (a call holds one while it runs).
PROXY_THREADS = 10
#: Seconds calls in flight get to finish when the proxy is stopped (SIGTERM, Ctrl-C).
STOP_GRACE = 5.0
#: One listener per port; the workers' keepalive pings welcome however often they come (by default a server
#: sends GOAWAY to a client that pings more than once in 5 min without data).
SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.keepalive_permit_without_calls", 1),
                  ("grpc.http2.min_recv_ping_interval_without_data_ms", 0), ("grpc.http2.max_ping_strikes", 0)]


def serve_proxy(storage_url: str, host: str = "127.0.0.1", port: int = 13000, *, threads: int = PROXY_THREADS,
                ready: Callable[[], None] | None = None) -> None:
    """Serve the Optuna storage at ``storage_url`` (a database server) at ``grpc://host:port`` until SIGTERM or
    Ctrl-C. The database is reached here once, so a wrong URL fails at once; ``ready`` is called once it listens."""
    if not storage_url:
        raise UserError("storage-proxy needs the database it serves: --storage postgresql+psycopg://USER@HOST/DB "
                        "(or $ACON_STORAGE)")
    if is_proxy(storage_url) or not storage_url.startswith(("postgresql", "mysql")):
        raise UserError(f"storage-proxy serves a database server (postgresql://... or mysql://...), got "
                        f"{mask_url(storage_url)}: SQLite takes one writer, and Optuna's proxy serves no journal")
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"storage-proxy threads must be an integer >= 1, got {threads!r}")
    require_grpc()
    server = make_server(open_storage(storage_url, heartbeat=False, ride_outages=False), host, port, threads)
    server.start()
    say(f"storage proxy for {mask_url(storage_url)} listening on grpc://{host}:{port} ({threads} threads)")
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # SIGTERM (a scheduler ending the task) as Ctrl-C
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if ready is not None:
        ready()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop(grace=STOP_GRACE).wait()  # calls in flight finish; the workers ride the gap until a restart
    say(f"storage proxy on grpc://{host}:{port} stopped")


def make_server(storage: optuna.storages.BaseStorage, host: str, port: int, threads: int = PROXY_THREADS) -> Any:
    """Optuna's proxy servicer on a gRPC server (not started). Not ``run_grpc_proxy_server``: it answers every failed
    call UNKNOWN, so a worker could not tell a database restart from a bug; here such a call answers UNAVAILABLE.
    (The servicer's private modules are used here and nowhere else.) One listener per port: a second proxy on the
    same port is refused, not silently given half the calls."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="proxy"),
                         interceptors=[_unavailable_while_database_down()], options=SERVER_OPTIONS)
    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise StorageError(f"storage-proxy cannot listen on {host}:{port} ({first_line(exc)}): another proxy or "
                           f"program may hold that port") from None
    return server


def _unavailable_while_database_down() -> Any:
    """A server interceptor: a call that failed because the database could not be reached answers UNAVAILABLE."""
    import grpc

    def guarded(behaviour: Callable) -> Callable:
        def call(request: Any, context: Any) -> Any:
            try:
                return behaviour(request, context)
            except Exception as exc:
                if is_transient(exc):
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"database unreachable: {describe_failure(exc)}")
                raise

        return call

    class UnavailableWhileDatabaseDown(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            handler = continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            return grpc.unary_unary_rpc_method_handler(guarded(handler.unary_unary),
                                                       request_deserializer=handler.request_deserializer,
                                                       response_serializer=handler.response_serializer)

    return UnavailableWhileDatabaseDown()
