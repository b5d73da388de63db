"""lowprob's plugin hooks. Each receives a :class:`Registrar` and registers through its ``add_*``.

Implement a hook with ``@lowprob.plugins.hookimpl`` on a module-level function of the same name.
Every hook is called once per plugin with a registrar bound to that plugin, so each registered name
records the plugin (and version) that provided it.
"""

from __future__ import annotations

import pluggy

from lowprob.plugins.registry import Registrar

hookspec = pluggy.HookspecMarker("lowprob")
hookimpl = pluggy.HookimplMarker("lowprob")


@hookspec
def register_estimators(registrar: Registrar) -> None:
    """Register estimator classes with ``registrar.add_estimator(cls, description=None)``.

    ``cls`` subclasses :class:`lowprob.core.Estimator` and is registered under ``cls.name``; the
    description defaults to the first line of its docstring.
    """


@hookspec
def register_extrapolations(registrar: Registrar) -> None:
    """Register activation-extrapolation fits with ``registrar.add_extrapolation``.

    Call it as ``add_extrapolation(name, fit, description=...)``, where
    ``fit(activations [n, d_model], W_U [d_model, d_vocab], target_ids, generator)`` is a pure
    function returning a :class:`lowprob.plugins.FitResult` — the probability estimate, optionally its
    standard error, and diagnostics (see :class:`lowprob.plugins.ExtrapolationFit`).
    """


@hookspec
def register_token_sets(registrar: Registrar) -> None:
    """Register token-set resolvers with ``registrar.add_token_set``.

    Call it as ``add_token_set(name, resolver, description=..., usage=...)``. The DSL evaluates
    ``name(arg, ...)`` as ``resolver(vocab, arg, ...)``, which returns a
    :class:`lowprob.core.TokenSet` and raises ``ValueError`` with a readable message on bad
    arguments. Names must be identifiers; ``usage`` is an example call such as ``freq("english")``.
    """


@hookspec
def register_scores(registrar: Registrar) -> None:
    """Register score functions for the splitting estimators with ``registrar.add_score``.

    Call it as ``add_score(name, builder, description=...)``, where ``builder(problem, pilot, generator)``
    returns a :class:`lowprob.plugins.scoring.Score`: ``complete(tokens, logits)`` scores whole inputs and
    ``prefixes(tokens)`` every prefix ending at a non-constant position (or ``None``). Estimators pick one with
    ``-o score=NAME``; the built-ins register ``margin`` and ``twist``.
    """


@hookspec
def register_distributions(registrar: Registrar) -> None:
    """Register named spec texts with ``registrar.add_distribution(name, text, description=...)``.

    Users pass ``name`` wherever a spec file or inline DSL text is accepted.
    """


@hookspec
def register_models(registrar: Registrar) -> None:
    """Register lazy model loaders with ``registrar.add_model``.

    Call it as ``add_model(name, loader, description="", default=False)``. ``loader()`` returns a
    :class:`lowprob.core.ModelAdapter`; it runs only when the model is requested, so discovery never
    loads weights. A third-party ``default=True`` overrides the built-in default model.

    ``add_model_scheme(scheme, loader, description=...)`` makes every name ``scheme:target`` loadable
    as ``loader(target)`` without registering it (the built-ins provide ``hf:`` and ``gguf:``).
    """


HOOK_NAMES: tuple[str, ...] = tuple(sorted(
    name for name, obj in list(globals().items()) if hasattr(obj, f"{hookspec.project_name}_spec")))
"""Every hook lowprob calls, by name."""
