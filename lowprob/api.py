"""The public Python API: compose a model, a distribution spec, a target, an estimator and a budget."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from lowprob import __version__
from lowprob.core.budget import Budget
from lowprob.core.errors import LowprobError, UnknownNameError
from lowprob.core.estimate import Estimate
from lowprob.core.estimator import Estimator, EstimatorOptions, Problem
from lowprob.core.meter import MeteredModel
from lowprob.core.model import ModelAdapter
from lowprob.core.runner import check_budget, run_estimator
from lowprob.dsl import CompiledSpec, load_spec, path_exists, read_spec_file
from lowprob.plugins import Registry, load_registry
from lowprob.plugins.tokenizer_vocabulary import TokenizerVocabulary

CLI_TARGET = "__target"
"""Name given to a target written as an expression (``argmax == "x"``) outside the spec."""

TARGET_EXPRESSION = re.compile(r"\s*(argmax\b|greedy\s*\(|sample\s*\()")
"""How a target written as an expression starts (anything else is a target name in the spec)."""

ModelLike: TypeAlias = str | ModelAdapter | Any
"""A model as :func:`estimate` takes it: a registered name, a :class:`ModelAdapter`, or a TransformerLens
``TransformerBridge`` that carries its tokenizer (``bridge.tokenizer``)."""


def load_model(name: str | None = None, *, registry: Registry | None = None) -> ModelAdapter:
    """The registered model ``name`` (default: the registry's default model), loaded, as a :class:`ModelAdapter`."""
    registry = registry or load_registry()
    return registry.model(name or registry.default_model_name)


def as_model(model: ModelLike | None, registry: Registry) -> ModelAdapter:
    """``model`` as a :class:`ModelAdapter`: looked up by name in ``registry`` (``None``: its default), used as
    is, or wrapped from a ``TransformerBridge`` with the vocabulary of its tokenizer."""
    if model is None or isinstance(model, str):
        return registry.model(model or registry.default_model_name)
    if isinstance(model, ModelAdapter):
        return model
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "d_vocab"):
        raise LowprobError(f"model= takes a registered model name, a ModelAdapter or a TransformerLens "
                           f"TransformerBridge, not {type(model).__name__}")
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise LowprobError("the TransformerBridge has no tokenizer: boot it with tokenizer=..., or pass "
                           "lowprob.core.ModelAdapter(bridge, vocab, name) with a lowprob Vocabulary")
    try:
        vocab = TokenizerVocabulary.from_transformers(tokenizer, int(cfg.d_vocab))
    except TypeError as exc:
        raise LowprobError(f"the TransformerBridge's tokenizer cannot be used: {exc}") from None
    return ModelAdapter(model, vocab, str(getattr(cfg, "model_name", None) or type(model).__name__))


@dataclass(frozen=True)
class SpecSource:
    """Spec text and where it came from (a file path, ``<name>`` for a registered spec, or ``<text>``)."""

    text: str
    origin: str
    name: str


def resolve_spec(spec: str, registry: Registry) -> SpecSource:
    """A spec given as a file path, the name of a registered distribution, or inline DSL text."""
    path = Path(spec)
    if "\n" not in spec and path.suffix and path_exists(path):
        return SpecSource(read_spec_file(path), str(path), path.stem)
    known = [entry.name for entry in registry.entries("distributions")]
    if spec in known:
        return SpecSource(registry.distribution_spec(spec), f"<{spec}>", spec)
    if any(word in spec for word in ("dist ", "tokens ", "target ")):
        return SpecSource(spec, "<text>", "inline")
    if path.suffix:
        raise LowprobError(f"spec file {spec!r} does not exist")
    raise UnknownNameError("distribution", spec, known)


@dataclass(frozen=True)
class CompiledSource:
    """A spec compiled for one model, with each requested target mapped to its name in the spec."""

    model: ModelAdapter
    spec: CompiledSpec
    target_names: dict[str, str]

    def problem(self, distribution: str | None = None, target: str | None = None) -> Problem:
        """A problem on a fresh meter; ``target`` as requested when compiling (or a spec target name)."""
        name = self.target_names.get(target, target) if target is not None else None
        return Problem(MeteredModel(self.model), self.spec.distribution(distribution), self.spec.target(name))


def compile_source(registry: Registry, spec: SpecSource, *, model: ModelLike | None = None,
                   targets: Sequence[str] = ()) -> CompiledSource:
    """Load the model (see :func:`as_model`) and compile the spec against its vocabulary, resolvers and context
    length.

    Each of ``targets`` is a target name in the spec or an expression such as ``argmax == " the"``;
    expressions are compiled with the spec so they can use its token sets.
    """
    adapter = as_model(model, registry)
    text, names = spec.text.rstrip() + "\n", {}
    for i, target in enumerate(targets):
        if TARGET_EXPRESSION.match(target):
            names[target] = f"{CLI_TARGET}{i}"
            text += f"target {names[target]} = {target}\n"
    compiled = load_spec(text, adapter.vocab, registry.token_set_resolvers(), max_length=adapter.n_ctx,
                         filename=spec.origin)
    return CompiledSource(adapter, compiled, names)


def compile_problem(registry: Registry, spec: SpecSource, *, model: ModelLike | None = None,
                    distribution: str | None = None, target: str | None = None) -> Problem:
    """One problem: a model, the spec's distribution and a target (a spec name or an expression)."""
    compiled = compile_source(registry, spec, model=model, targets=[target] if target else [])
    if target is None and not compiled.spec.targets:
        raise LowprobError(f"{spec.origin}: the spec defines no target; give one as an expression, e.g. "
                           "--target 'argmax == \"...\"' (in Python: target='argmax == \"...\"'), or add a "
                           "`target` line to the spec")
    return compiled.problem(distribution, target)


def as_budget(budget: Budget | Mapping[str, Any] | int) -> Budget:
    """A :class:`Budget` from a budget, a mapping of its fields, or a number of model calls."""
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, int):
        return Budget(model_calls=budget)
    return Budget(**budget)


def estimate(spec: str, *, target: str | None = None, distribution: str | None = None,
             model: ModelLike | None = None, estimator: str = "naive", options: Mapping[str, Any] | None = None,
             budget: Budget | Mapping[str, Any] | int = 100_000, seed: int = 0, level: float = 0.95,
             progress: bool | None = None, registry: Registry | None = None) -> Estimate:
    """Estimate ``Pr_{x~D}[M(x) hits target]`` once.

    ``spec`` is a spec file, a registered distribution name or DSL text; ``model`` is a registered name (default:
    the registry's default model), a :class:`ModelAdapter` or a ``TransformerBridge`` with its tokenizer. The
    estimator's options and the budget are checked before the model loads. Example::

        lowprob.estimate("caps", target='argmax == "CESS"', budget=100_000, seed=1)
    """
    registry = registry or load_registry()
    source = resolve_spec(spec, registry)
    chosen, checked = registry.create_estimator(estimator, options), as_budget(budget)
    check_budget(chosen, checked)
    problem = compile_problem(registry, source, model=model, distribution=distribution, target=target)
    return run_problem(registry, problem, chosen, None, checked, seed, level=level, progress=progress)


def run_problem(registry: Registry, problem: Problem, estimator: str | Estimator[Any],
                options: EstimatorOptions | Mapping[str, Any] | None, budget: Budget, seed: int, *,
                level: float = 0.95, progress: bool | None = None) -> Estimate:
    """Run a registered estimator on a compiled problem, recording which plugin provided it.

    ``estimator`` is a registered name (created with ``options``) or an instance from
    :meth:`Registry.create_estimator` (then ``options`` must be ``None``).
    """
    if isinstance(estimator, Estimator):
        if options is not None:
            raise LowprobError(f"options go to create_estimator, not with the created estimator {estimator.name!r}")
        chosen = estimator
    else:
        chosen = registry.create_estimator(estimator, options)
    entry = registry.entry("estimators", chosen.name)
    provenance = {"plugin": entry.plugin, "plugin_version": entry.version, "lowprob_version": __version__}
    return run_estimator(chosen, problem, budget, seed, level=level, progress=progress, provenance=provenance)
