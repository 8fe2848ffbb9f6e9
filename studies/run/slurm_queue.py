"""What the SLURM controller says about a job: the states of its tasks (``array_states``), asked with ``scontrol``
(no accounting database needed), and the node a running job is on (``batch_host``)."""
from __future__ import annotations

import subprocess

#: Seconds a SLURM command (scontrol, scancel) gets to answer before the launcher asks again.
SLURM_TIMEOUT = 60.0
#: The states of a job that will not run again (one requeued is PENDING again).
OVER = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
        "DEADLINE", "SPECIAL_EXIT", "REVOKED"}


class ControllerBusy(Exception):
    """``slurmctld`` did not answer in time (a loaded controller): the caller keeps what it knew and asks again."""


def slurm(*argv: str) -> subprocess.CompletedProcess:
    """Run a SLURM command; ``ControllerBusy`` if it does not answer within ``SLURM_TIMEOUT`` s."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=SLURM_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ControllerBusy(f"{argv[0]} did not answer within {SLURM_TIMEOUT:.0f} s") from None


def array_states(job_id: str) -> dict[str, str]:
    """``{task id: state}`` of a job array (``JOB_TASK``) or of a single job (``JOB``), from ``scontrol show job``;
    tasks still pending together are listed one by one; {} once the controller forgot the job (``MinJobAge``).
    Raises ``ControllerBusy`` when the controller does not answer in time."""
    out = slurm("scontrol", "-o", "show", "job", job_id)
    if out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        state = fields.get("JobState", "UNKNOWN")
        if "ArrayJobId" not in fields:
            states[fields.get("JobId", job_id)] = state
            continue
        for task in _task_ids(fields["ArrayTaskId"]):
            states[f"{fields['ArrayJobId']}_{task}"] = state
    return states


def _task_ids(text: str) -> list[int]:
    """``"0"``, ``"1-3%2"``, ``"1,4-5"`` -> the task indices (``%N`` is the array's parallelism, not a task)."""
    ids = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        ids += list(range(int(low), int(high or low) + 1))
    return ids


def batch_host(job_id: str) -> str | None:
    """The node a running job runs on (``BatchHost``), None while it is not running."""
    try:
        out = slurm("scontrol", "-o", "show", "job", job_id)
    except ControllerBusy:
        return None
    fields = dict(part.split("=", 1) for part in out.stdout.split() if "=" in part)
    return fields.get("BatchHost") if fields.get("JobState") == "RUNNING" else None
