"""The robustness evaluator: suites of attacks, per-sample worst case, reports."""
from training.evaluate.evaluator import ScaledLogits, evaluate
from training.evaluate.report import AttackResult, Report
from training.evaluate.suite import SUITES, AttackSpec, distill_suite, quick_suite, standard_suite

__all__ = ["SUITES", "AttackResult", "AttackSpec", "Report", "ScaledLogits", "distill_suite",
           "evaluate", "quick_suite", "standard_suite"]
