"""lowprob: estimate the probability that a language model produces a rare output.

The public API composes a model, an input distribution written in lowprob's DSL, a target event, an
estimator plugin and a budget into an :class:`Estimate` with error bars, cost and provenance::

    import lowprob
    est = lowprob.estimate("hex-demo", target='argmax == "ff"', budget=200_000, seed=1)
    print(est.summary())

Plugins implement hooks marked with ``@lowprob.hookimpl`` (see docs/plugins.md).
"""

__version__ = "0.1.0"

from lowprob.api import estimate  # noqa: E402
from lowprob.core import (  # noqa: E402
    Budget,
    Capabilities,
    Estimate,
    Estimator,
    EstimatorOptions,
    EstimatorOutput,
    LowprobError,
    Problem,
    StepContext,
    StepInfo,
    run_estimator,
)
from lowprob.plugins import hookimpl, load_registry  # noqa: E402

__all__ = [
    "Budget",
    "Capabilities",
    "Estimate",
    "Estimator",
    "EstimatorOptions",
    "EstimatorOutput",
    "LowprobError",
    "Problem",
    "StepContext",
    "StepInfo",
    "__version__",
    "estimate",
    "hookimpl",
    "load_registry",
    "run_estimator",
]
