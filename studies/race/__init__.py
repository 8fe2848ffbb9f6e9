"""Racing designs across seeds: the plan and the procedure (``procedure``), its tests (``stats``), and how a race is
recorded on the Optuna study and MLflow (``record``). The run's scheduling of rounds is ``studies.run.race_schedule``."""
