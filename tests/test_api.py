"""The Python API and the ``estimate`` command over it: models as objects, and the checks a new user meets first
(options before the model loads, a missing target, required options, option help naming real commands)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.model_bridge import TransformerBridge
from transformers import PreTrainedTokenizerFast

import lowprob
from lowprob import cli
from lowprob.core.model import ModelAdapter
from lowprob.plugins import Registrar, Registry, hookimpl, load_registry
from lowprob.plugins.testing import tiny_model

LETTERS = "abcdef"
SPEC = "tokens letter = /^[a-f]$/\ndist main = letter * 3\n"
"""Three letters drawn uniformly: 216 inputs for a six-token model."""
TARGET = 'argmax == "c"'
CONFIG = dict(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=64, n_ctx=8, d_vocab=len(LETTERS), act_fn="gelu",
              normalization_type="LN", seed=0)
"""The config of ``plugins.testing.tiny_model()``: the same seeded weights."""


def _bridge(tokenizer: Any = None) -> Any:
    return TransformerBridge.boot_native(dict(CONFIG), tokenizer=tokenizer)  # type: ignore[attr-defined]


def _letter_tokenizer() -> PreTrainedTokenizerFast:
    """A Hugging Face fast tokenizer whose ids are the letters a–f, built offline."""
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(LETTERS)}, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(entry_points=False)


def test_estimate_takes_a_model_adapter(registry: Registry) -> None:
    adapter = tiny_model(d_vocab=len(LETTERS))
    est = lowprob.estimate(SPEC, target=TARGET, model=adapter, budget=400, seed=1, registry=registry)
    assert est.model_calls == 400 and 0 < est.value < 1 and est.ci is not None


def test_estimate_takes_a_transformer_bridge_with_its_tokenizer(registry: Registry) -> None:
    """The bridge's tokenizer becomes the vocabulary; the same weights as the adapter give the same estimate."""
    by_bridge = lowprob.estimate(SPEC, target=TARGET, model=_bridge(_letter_tokenizer()), budget=400, seed=1,
                                 registry=registry)
    by_adapter = lowprob.estimate(SPEC, target=TARGET, model=tiny_model(d_vocab=len(LETTERS)), budget=400, seed=1,
                                  registry=registry)
    assert (by_bridge.value, by_bridge.hits) == (by_adapter.value, by_adapter.hits)


def test_a_bridge_without_tokenizer_or_a_foreign_object_is_a_clear_error(registry: Registry) -> None:
    with pytest.raises(lowprob.LowprobError, match="has no tokenizer.*ModelAdapter"):
        lowprob.estimate(SPEC, target=TARGET, model=_bridge(), budget=10, registry=registry)
    with pytest.raises(lowprob.LowprobError, match="not dict"):
        lowprob.estimate(SPEC, target=TARGET, model={"not": "a model"}, budget=10, registry=registry)


def test_load_model_returns_the_registered_adapter(registry: Registry) -> None:
    adapter = lowprob.load_model("random-1l", registry=registry)
    assert isinstance(adapter, ModelAdapter) and adapter.name == "random-1l"
    assert lowprob.load_model(registry=registry).name == registry.default_model_name


class _Loads:
    """A model plugin that records every load of its model ``spy`` (the demo model underneath)."""

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def register_models(self, registrar: Registrar) -> None:
        registrar.add_model("spy", self.load)

    def load(self) -> ModelAdapter:
        self.count += 1
        return load_registry(entry_points=False).model("random-1l")


@pytest.fixture
def spy() -> Iterator[tuple[_Loads, Registry]]:
    loads = _Loads()
    yield loads, load_registry(entry_points=False, extra_plugins=[loads])


def test_options_and_budget_are_checked_before_the_model_loads(spy: tuple[_Loads, Registry]) -> None:
    loads, registry = spy
    with pytest.raises(lowprob.LowprobError, match="invalid options for estimator 'naive': nope"):
        lowprob.estimate("hex-demo", model="spy", options={"nope": 1}, registry=registry)
    with pytest.raises(lowprob.LowprobError, match="unknown estimator 'nope'"):
        lowprob.estimate("hex-demo", model="spy", estimator="nope", registry=registry)
    with pytest.raises(lowprob.LowprobError, match="model_calls must be at least 1"):
        lowprob.estimate("hex-demo", model="spy", budget={"model_calls": -1}, registry=registry)
    with pytest.raises(lowprob.LowprobError, match="less than one step of estimator 'mhis'.*burn_in"):
        lowprob.estimate("hex-demo", model="spy", estimator="mhis", budget=10_000, registry=registry)
    assert loads.count == 0


def test_the_cli_checks_options_and_budget_before_loading_the_model(spy: tuple[_Loads, Registry],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    loads, registry = spy
    monkeypatch.setattr(cli, "_registry", lambda: registry)
    result = CliRunner().invoke(cli.main, ["estimate", "hex-demo", "--model", "spy", "-o", "batch_size=0"])
    assert result.exit_code == 1 and "invalid options for estimator 'naive': batch_size" in result.output
    result = CliRunner().invoke(cli.main, ["estimate", "hex-demo", "--model", "spy", "--estimator", "mhis",
                                           "--budget-calls", "10000"])
    assert result.exit_code == 1 and "less than one step of estimator 'mhis'" in result.output
    assert loads.count == 0


def test_a_spec_without_target_suggests_the_target_expression(registry: Registry) -> None:
    with pytest.raises(lowprob.LowprobError, match="defines no target") as raised:
        lowprob.estimate(SPEC, model=tiny_model(d_vocab=len(LETTERS)), budget=10, registry=registry)
    assert "--target 'argmax == \"...\"'" in str(raised.value)
    result = CliRunner().invoke(cli.main, ["estimate", "dist main = BOS", "--model", "random-1l"])
    assert result.exit_code == 1
    assert "the spec defines no target" in result.output and "--target 'argmax == \"...\"'" in result.output


def test_estimators_options_shows_required_options_as_required() -> None:
    result = CliRunner().invoke(cli.main, ["estimators", "--options"])
    assert result.exit_code == 0, result.output
    assert "PydanticUndefined" not in result.output
    assert re.search(r"--option value=\.\.\.  \(float, required\)", result.output), result.output
    assert "--option batch_size=...  (int, default " in result.output


def test_option_help_names_only_commands_that_exist(registry: Registry) -> None:
    """Every `lowprob <command>` an option's description points to is a real command."""
    named = {(entry.name, option, command)
             for entry in registry.entries("estimators")
             for option, field in entry.obj.Options.model_fields.items()
             for command in re.findall(r"lowprob ([a-z][a-z-]*)", field.description or "")}
    assert ("activation-extrapolation", "fit", "plugins") in named
    missing = sorted(item for item in named if item[2] not in cli.main.commands)
    assert not missing, f"options whose help names a command that does not exist: {missing}"
