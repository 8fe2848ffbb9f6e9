"""What to run: study definitions, datasets, the short-schedule trainer, Optuna and MLflow plumbing.

``Study`` defines a study; ``run_study(name_or_study, RunOptions(...))`` runs or resumes it.
"""
from studies.settings import Preset, Settings
from studies.catalog import load_study
from studies.spec import STUDIES, Study


def __getattr__(name: str):
    # the runner pulls in optuna and mlflow: import it only when asked for
    if name == "run_study":
        from studies.run.launch import run_study

        return run_study
    if name in ("RunOptions", "StudyRun"):
        from studies.run import options

        return getattr(options, name)
    raise AttributeError(f"module 'studies' has no attribute {name!r}")


__all__ = ["STUDIES", "Preset", "RunOptions", "Settings", "Study", "StudyRun", "load_study", "run_study"]
