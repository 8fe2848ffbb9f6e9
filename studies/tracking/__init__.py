"""MLflow tracking: the layout (``schema``), its one writer (``writer.Tracker``) and what a run
leaves on the parent run when it ends (``summary``).
"""
