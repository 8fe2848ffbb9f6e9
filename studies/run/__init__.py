"""How to run a study: the launcher API, opening a study, the trial queue, the race's rounds, trials, workers.

``run_study`` and ``prepare_study`` (``studies.run.launch``) are the entry points; a ``RunContext``
(``studies.run.context``) is built once per process and passed down to the queue and to each trial.
"""
