"""What to show: ablation tables with honest statistics, params/FLOPs overhead, and plots.

``build_report`` reads a study from MLflow and returns (and writes) its ablation table;
``overhead_table`` counts params and FLOPs of design cells without training.
"""
from report.build import build_report
from report.collect import StudyRuns, collect, history
from report.errors import EmptyStudyError, MetricNotFoundError, ReportError, StudyNotFoundError
from report.overhead import overhead_table
from report.tables import FORMATS, format_table

__all__ = [
    "FORMATS", "EmptyStudyError", "MetricNotFoundError", "ReportError", "StudyNotFoundError", "StudyRuns",
    "build_report", "collect", "format_table", "history", "overhead_table",
]
