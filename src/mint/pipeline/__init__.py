"""Run folders, manifests, configs and reports: `mint run` (`run_pipeline`), the `mint select`
step, exports for other trainers, plots and the report.

This package calls into `mint.selection` and `mint.model`; neither of them imports it.
"""
from __future__ import annotations

from mint.pipeline.runner import PipelineResult, StepInfo, read_step, run_pipeline

__all__ = ["run_pipeline", "PipelineResult", "StepInfo", "read_step"]
