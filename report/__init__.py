"""What to show: ablation tables with honest statistics, params/FLOPs overhead, and plots.

``build_report`` reads a study from MLflow and returns (and writes) its ablation table;
``overhead_table`` counts params and FLOPs of design cells without training.
"""
from report.build import build_report
from report.collect import StudyRuns, collect, history
from report.errors import EmptyStudyError, MetricNotFoundError, ReportError, StudyNotFoundError
from report.tables import FORMATS, format_table

__all__ = [
    "FORMATS", "EmptyStudyError", "MetricNotFoundError", "ReportError", "StudyNotFoundError", "StudyRuns",
    "build_report", "collect", "format_table", "history", "overhead_table",
]


def __getattr__(name: str):
    """``overhead_table`` on first use: it builds models, so it brings torch and torchvision (seconds per start),
    which reading a study's table does not need."""
    if name == "overhead_table":
        from report.overhead import overhead_table

        return overhead_table
    raise AttributeError(f"module 'report' has no attribute {name!r}")
