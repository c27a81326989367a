"""The HTML report of one run or of several side by side (DESIGN section 10)."""
from untwine.report.page import render_report, write_report
from untwine.report.rundir import RunRecord, read_run
from untwine.report.scores import metric_scores

__all__ = ["RunRecord", "metric_scores", "read_run", "render_report", "write_report"]
