"""Shared pytest fixtures: a seeded RNG, one CPU thread, each available device, full-precision fp32."""
import signal

import pytest
import torch


@pytest.fixture(autouse=True)
def seed_torch():
    """Seed torch's global RNG so random inits and inputs repeat across runs and orders."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def single_thread():
    """Run on one intra-op thread: tiny tensors gain nothing from more, and on a busy 2-core machine
    thread contention made gradcheck ~30x slower (9 s instead of 0.3 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device this machine has: cpu always, cuda where a GPU is present (tests run once per device)."""
    return torch.device(request.param)


@pytest.fixture
def ieee_fp32():
    """Full-precision float32 convolutions: on CUDA, cuDNN may use TF32 (10-bit mantissa) by default."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        before, conv.fp32_precision = conv.fp32_precision, "ieee"
        yield
        conv.fp32_precision = before
    else:
        before, torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.allow_tf32, False
        yield
        torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(autouse=True)
def isolated_store_env():
    """Keep store choices from leaking between tests: ``mlflow.set_tracking_uri`` exports
    MLFLOW_TRACKING_URI, and a tracking server's client sizes MLflow's HTTP retries in the environment, which
    later subprocesses (CLI tests, workers) would inherit."""
    import os

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "ACON_STORAGE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT", "ACON_MLFLOW_HTTP_SET")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt, as in a terminal, also when the suite runs as a background job: a shell
    starts those with SIGINT ignored, Python keeps it ignored, and a test that presses Ctrl-C would wait forever."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


#: Modules whose tests must share one pytest-xdist worker (``--dist loadgroup``), one test at a time:
#: ``test_docs``, whose module fixture does the work of all its tests at once (every page's commands and both builds,
#: on every core), so each worker that got one of its tests would do it all again; ``test_slurm``, whose job arrays
#: share the one SLURM node's 2 CPUs, so a second array would wait for the first. The other tests that start
#: services and workers ride the load of whatever runs beside them, as they must on a user's machine.
GROUPED = {"test_docs", "test_slurm"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups (after it, it saw none)
def pytest_collection_modifyitems(config, items):
    module = {item: item.module.__name__.rpartition(".")[2] for item in items}
    for item in items:
        if module[item] in GROUPED:
            item.add_marker(pytest.mark.xdist_group(module[item]))
    # the long groups first (each is minutes on one worker): dealt out last, one ran on alone while the other idled
    items.sort(key=lambda item: module[item] not in GROUPED)
