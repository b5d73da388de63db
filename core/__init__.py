"""lowprob.core: the bottom layer — distributions, targets, the metered model, budgets, estimators, runner.

Nothing here imports ``lowprob.dsl`` or ``lowprob.plugins``; ``tests/test_architecture.py`` enforces it.
"""

from lowprob.core.budget import Budget
from lowprob.core.distribution import Block, Categorical, InputDistribution
from lowprob.core.errors import BudgetError, LowprobError, UnknownNameError, WeightError
from lowprob.core.estimate import ConfidenceInterval, Estimate, Provenance, TracePoint
from lowprob.core.estimator import (
    Capabilities,
    Estimator,
    EstimatorOptions,
    EstimatorOutput,
    Problem,
    StepContext,
    StepInfo,
)
from lowprob.core.meter import Cost, MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.runner import run_estimator
from lowprob.core.target import ArgmaxIn, ArgmaxIs, Target
from lowprob.core.token_set import ResolverArg, TokenSet, TokenSetResolver
from lowprob.core.vocabulary import ListVocabulary, Vocabulary

__all__ = [
    "ArgmaxIn",
    "ArgmaxIs",
    "Block",
    "Budget",
    "BudgetError",
    "Capabilities",
    "Categorical",
    "ConfidenceInterval",
    "Cost",
    "Estimate",
    "Estimator",
    "EstimatorOptions",
    "EstimatorOutput",
    "InputDistribution",
    "ListVocabulary",
    "LowprobError",
    "MeteredModel",
    "ModelAdapter",
    "Problem",
    "Provenance",
    "StepContext",
    "StepInfo",
    "Target",
    "TracePoint",
    "UnknownNameError",
    "ResolverArg",
    "TokenSet",
    "TokenSetResolver",
    "Vocabulary",
    "WeightError",
    "run_estimator",
]
