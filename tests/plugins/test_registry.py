"""Registry lookups, registration checks, duplicate names and the default model."""

from __future__ import annotations

import pytest

from lowprob.core.errors import LowprobError, UnknownNameError
from lowprob.core.token_set import TokenSet
from lowprob.plugins import Kind, PluginError, load_registry
from lowprob.plugins.builtin.activation_extrapolation import ActivationExtrapolation
from lowprob.plugins.builtin.naive import NaiveMonteCarlo
from lowprob.plugins.fits import FitResult


def _load(*plugins: object):  # type: ignore[no-untyped-def]
    return load_registry(entry_points=False, extra_plugins=plugins)


def _fit(activations, W_U, target_ids, generator):  # type: ignore[no-untyped-def]  # noqa: N803
    return FitResult(0.5)


def test_typed_lookups_return_registered_objects(plugin) -> None:  # type: ignore[no-untyped-def]
    def register_extrapolations(registrar):  # type: ignore[no-untyped-def]
        registrar.add_extrapolation("half", _fit, description="always 0.5")

    registry = _load(plugin("fits", "1.0", register_extrapolations=register_extrapolations))
    assert registry.estimator("naive") is NaiveMonteCarlo
    assert registry.extrapolation("half") is _fit
    assert "dist main" in registry.distribution_spec("hex-demo")
    assert set(registry.token_set_resolvers()) >= {"vocab", "specials", "freq"}
    assert registry.default_model_name == "lowprob-1l"
    entry = registry.entry("extrapolation", "half")
    assert (entry.plugin, entry.version, entry.description) == ("fits", "1.0", "always 0.5")


@pytest.mark.parametrize("kind", ["estimators", "estimator", Kind.ESTIMATOR])
def test_entries_accepts_plural_singular_and_enum(kind) -> None:  # type: ignore[no-untyped-def]
    entries = {e.name: e for e in _load().entries(kind)}
    assert entries["naive"].plugin == "lowprob.naive"
    assert entries["naive"].description.startswith("p̂ = hits / n")


def test_entries_rejects_unknown_kind() -> None:
    with pytest.raises(UnknownNameError, match="known kinds: distributions, estimators"):
        _load().entries("widgets")


@pytest.mark.parametrize(("lookup", "kind"), [
    ("estimator", "estimator"), ("model", "model"), ("distribution_spec", "distribution"),
    ("extrapolation", "extrapolation"),
])
def test_unknown_names_list_the_known_ones(lookup: str, kind: str) -> None:
    registry = _load()
    with pytest.raises(UnknownNameError) as info:
        getattr(registry, lookup)("no-such-thing")
    message = str(info.value)
    assert f"unknown {kind} 'no-such-thing'" in message
    known = [e.name for e in registry.entries(kind)]
    assert message.endswith(", ".join(known) if known else "(none registered)")


def test_duplicate_name_across_plugins_names_both(plugin) -> None:  # type: ignore[no-untyped-def]
    def register_estimators(registrar):  # type: ignore[no-untyped-def]
        registrar.add_estimator(NaiveMonteCarlo)

    with pytest.raises(PluginError) as info:
        _load(plugin("copycat", "2.3", register_estimators=register_estimators))
    message = str(info.value)
    assert "estimator 'naive' is registered by two plugins" in message
    assert "lowprob.naive 0.1.0" in message and "copycat 2.3" in message


def test_duplicate_disappears_when_one_is_blocked(plugin) -> None:  # type: ignore[no-untyped-def]
    def register_estimators(registrar):  # type: ignore[no-untyped-def]
        registrar.add_estimator(NaiveMonteCarlo)

    copycat = plugin("copycat", "2.3", register_estimators=register_estimators)
    registry = load_registry(entry_points=False, block=["naive"], extra_plugins=[copycat])
    assert registry.entry("estimator", "naive").plugin == "copycat"


@pytest.mark.parametrize(("call", "message"), [
    (lambda registrar: registrar.add_estimator(int), "needs an Estimator subclass"),
    (lambda registrar: registrar.add_model("bad name", lambda: None, description=""),
     "invalid model name 'bad name'"),
    (lambda registrar: registrar.add_token_set("top-k", lambda v: TokenSet.of([0]), description="",
                                               usage=""),
     "invalid token set name 'top-k'"),
    (lambda registrar: registrar.add_extrapolation("x", 3.0, description=""),
     "extrapolation 'x' must be callable"),
    (lambda registrar: registrar.add_distribution("empty", "  ", description=""),
     "needs non-empty spec text"),
])
def test_invalid_registrations_name_the_plugin(plugin, call, message):  # type: ignore[no-untyped-def]
    with pytest.raises(PluginError, match=message) as info:
        _load(plugin("sloppy", register_models=call))
    assert str(info.value).startswith("plugin 'sloppy':")


def test_models_load_lazily_once_and_are_cached(plugin) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def loader():  # type: ignore[no-untyped-def]
        calls.append("tiny")
        from lowprob.plugins.testing import tiny_model
        return tiny_model()

    def register_models(registrar):  # type: ignore[no-untyped-def]
        registrar.add_model("tiny", loader, description="tiny test model")

    registry = _load(plugin("tiny-models", register_models=register_models))
    assert calls == []
    assert registry.model("tiny") is registry.model("tiny")
    assert calls == ["tiny"]


def test_a_failing_loader_is_a_plugin_error(plugin) -> None:  # type: ignore[no-untyped-def]
    def register_models(registrar):  # type: ignore[no-untyped-def]
        registrar.add_model("broken", lambda: 1 / 0, description="")
        registrar.add_model("wrong", lambda: "not a model", description="")

    registry = _load(plugin("flaky", "0.1", register_models=register_models))
    with pytest.raises(PluginError, match="model 'broken' from plugin flaky 0.1 failed to load: "
                                          "ZeroDivisionError"):
        registry.model("broken")
    with pytest.raises(PluginError, match="returned str, not a ModelAdapter"):
        registry.model("wrong")


def test_third_party_default_model_overrides_builtin(plugin) -> None:  # type: ignore[no-untyped-def]
    def one(registrar):  # type: ignore[no-untyped-def]
        registrar.add_model("mine", lambda: None, description="", default=True)

    def two(registrar):  # type: ignore[no-untyped-def]
        registrar.add_model("theirs", lambda: None, description="", default=True)

    assert _load(plugin("a", register_models=one)).default_model_name == "mine"
    with pytest.raises(PluginError, match="several default models: 'mine' .* and 'theirs'"):
        _load(plugin("a", register_models=one), plugin("b", register_models=two))


def test_no_default_model_is_a_clear_error() -> None:
    registry = load_registry(entry_points=False, block=["lowprob.models"])
    with pytest.raises(PluginError, match="no plugin registered a default model"):
        _ = registry.default_model_name


def test_a_model_needs_no_description(plugin) -> None:  # type: ignore[no-untyped-def]
    def register_models(registrar):  # type: ignore[no-untyped-def]
        registrar.add_model("bare", lambda: None)

    entry = _load(plugin("bare-model", register_models=register_models)).entry("model", "bare")
    assert (entry.name, entry.description) == ("bare", "")


def test_create_estimator_validates_options_and_hands_over_the_registry() -> None:
    """The generic extrapolation estimator finds its fit in the registry that created it, not a fresh one."""
    registry = _load()
    naive = registry.create_estimator("naive", {"batch_size": 7})
    assert isinstance(naive, NaiveMonteCarlo) and naive.options.batch_size == 7
    with pytest.raises(LowprobError, match="invalid options for estimator 'naive': nope"):
        registry.create_estimator("naive", {"nope": 1})
    generic = registry.create_estimator("activation-extrapolation", {"fit": "gld"})
    assert generic.fit() is registry.extrapolation("gld")  # type: ignore[attr-defined]


def test_the_extrapolation_estimator_loads_no_registry_itself() -> None:
    orphan = ActivationExtrapolation({"fit": "qld"})
    with pytest.raises(LowprobError, match=r"registry.create_estimator\('activation-extrapolation'"):
        orphan.fit()
