"""The benchmark runner: one run (:func:`run`), many runs (:func:`compare`), their results.

See docs/benchmarks.md for the protocols and docs/results-schema.md for what a run writes.
"""

from __future__ import annotations

from bayesagg.runner.compare import compare
from bayesagg.runner.config import ConfigError, RunConfig
from bayesagg.runner.plan import Plan, plan
from bayesagg.runner.run import run

__all__ = ["ConfigError", "Plan", "RunConfig", "compare", "plan", "run"]
