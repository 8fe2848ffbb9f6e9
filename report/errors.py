"""Errors a report raises for bad input; each message is one line the CLI prints as is."""
from __future__ import annotations

from studies.errors import UserError


class ReportError(UserError):
    """A report cannot be built from what the user asked for."""


class StudyNotFoundError(ReportError, LookupError):
    """No MLflow experiment or parent run for the study."""


class EmptyStudyError(ReportError):
    """The study exists but has no trial runs (or none completed)."""


class MetricNotFoundError(ReportError, LookupError):
    """No run of the study logged the requested metric."""
