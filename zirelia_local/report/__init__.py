"""Stage 5, the report: one self-contained HTML page about the run."""

from zirelia_local.report.stage import write_report

__all__ = ["write_report"]
