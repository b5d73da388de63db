"""lowprob: estimate the probability that a language model produces a rare output.

The public API composes a model, an input distribution written in lowprob's DSL, a target event, an
estimator plugin and a budget into an :class:`Estimate` with error bars, cost and provenance::

    import lowprob
    est = lowprob.estimate("caps", target='argmax == "CESS"', budget=100_000, seed=1)
    print(est.summary())

Plugins implement hooks marked with ``@lowprob.hookimpl`` (see docs/plugins.md). Names are imported lazily,
so ``import lowprob.core`` does not load the DSL or the plugin system.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "estimate": "lowprob.api",
    "load_model": "lowprob.api",
    "read_results": "lowprob.results",
    "ResultRow": "lowprob.results",
    "ModelAdapter": "lowprob.core",
    "Budget": "lowprob.core",
    "Capabilities": "lowprob.core",
    "Estimate": "lowprob.core",
    "Estimator": "lowprob.core",
    "EstimatorOptions": "lowprob.core",
    "EstimatorOutput": "lowprob.core",
    "LowprobError": "lowprob.core",
    "Problem": "lowprob.core",
    "StepContext": "lowprob.core",
    "StepInfo": "lowprob.core",
    "run_estimator": "lowprob.core",
    "hookimpl": "lowprob.plugins",
    "load_registry": "lowprob.plugins",
}

__all__ = [
    "Budget",
    "Capabilities",
    "Estimate",
    "Estimator",
    "EstimatorOptions",
    "EstimatorOutput",
    "LowprobError",
    "ModelAdapter",
    "Problem",
    "ResultRow",
    "StepContext",
    "StepInfo",
    "__version__",
    "estimate",
    "hookimpl",
    "load_model",
    "load_registry",
    "read_results",
    "run_estimator",
]

if TYPE_CHECKING:
    from lowprob.api import estimate, load_model
    from lowprob.core import (
        Budget,
        Capabilities,
        Estimate,
        Estimator,
        EstimatorOptions,
        EstimatorOutput,
        LowprobError,
        ModelAdapter,
        Problem,
        StepContext,
        StepInfo,
        run_estimator,
    )
    from lowprob.plugins import hookimpl, load_registry
    from lowprob.results import ResultRow, read_results


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lowprob' has no attribute {name!r}")
