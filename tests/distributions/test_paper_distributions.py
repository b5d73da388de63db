"""The paper's 8 input distributions compile against the built-in BPE tokenizer, sample reproducibly, have exact
``log_prob``, select exactly the paper's token classes, and work by name from the registry and the CLI."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lowprob.cli import main
from lowprob.core.distribution import InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.dsl import load_spec
from lowprob.dsl.compiler import CompiledSpec
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.distributions import PAPER_DISTRIBUTIONS
from lowprob.plugins.builtin.hf_vocab import builtin_vocabulary

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(entry_points=False)
VOCAB = builtin_vocabulary()
STRINGS = [VOCAB.token_string(i) for i in range(VOCAB.size)]
SPECIAL = set(VOCAB.special_tokens.values())
HEX = set("0123456789abcdef")
PUNCT = set(",.?!:;")

LENGTHS = {"hex": 33, "camel": 33, "colon": 34, "if": 34, "caps": 24, "english": 26, "spanish": 25, "icl": 30}
"""Sequence lengths with BOS on the built-in tokenizer (caps: "He"/"She" and " screamed" are several tokens)."""


@cache
def compiled(name: str) -> CompiledSpec:
    return load_spec(REGISTRY.distribution_spec(name), VOCAB, REGISTRY.token_set_resolvers(), max_length=64,
                     filename=f"<{name}>")


@cache
def samples(name: str) -> torch.Tensor:
    return compiled(name).distribution().sample(64, torch.Generator().manual_seed(0))


def strings(name: str, position: int) -> list[str]:
    return [STRINGS[int(i)] for i in samples(name)[:, position]]


def paper_set(table: str, rule: Callable[[str], bool], k: int | None = None) -> dict[int, float]:
    """The paper's recipe in plain Python: the table's weights restricted to tokens passing ``rule``, then the
    ``k`` heaviest (ties: lower id)."""
    freq = REGISTRY.token_set_resolvers()["freq"](VOCAB, table)
    assert freq.weights is not None
    kept = [(int(i), float(w)) for i, w in zip(freq.ids, freq.weights, strict=True) if rule(STRINGS[int(i)])]
    kept.sort(key=lambda iw: (-iw[1], iw[0]))
    return dict(kept[:k])


def as_dict(name: str, tokens: str) -> dict[int, float]:
    ts = compiled(name).token_sets[tokens]
    assert ts.weights is not None
    return {int(i): float(w) for i, w in zip(ts.ids, ts.weights, strict=True)}


def is_alpha(s: str) -> bool:
    return s.isalpha()


def is_camel(s: str) -> bool:
    return (len(s) > 1 and s[0].isupper() and s[1:].islower() and " " not in s
            and s not in {"None", "True", "False"})


def is_caps(s: str) -> bool:
    return len(s) > 1 and all(c.isupper() or c in PUNCT for c in s)


def is_mid(s: str) -> bool:
    return (len(s) > 1 and s[0] == " " and all(c.isalpha() or c in PUNCT for c in s[1:])) or s in set(",.!?;")


def is_spanish(s: str) -> bool:
    return all(c.isalpha() or c.isspace() for c in s) and s != ""


def word_rule(letter: str) -> Callable[[str], bool]:
    return lambda s: len(s) >= 5 and s[0] == " " and s[1].upper() == letter and s[1:].isalpha()


@pytest.mark.parametrize("name", PAPER_DISTRIBUTIONS)
def test_compiles_by_name_with_no_target(name: str) -> None:
    spec = compiled(name)
    assert spec.distribution().length == LENGTHS[name] <= 64
    assert spec.targets == {}
    assert REGISTRY.entry("distribution", name).description.startswith(f"{name}: ")


@pytest.mark.parametrize("name", PAPER_DISTRIBUTIONS)
def test_samples_are_seeded_and_start_with_bos(name: str) -> None:
    dist = compiled(name).distribution()
    again = dist.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(samples(name), again)
    assert samples(name).shape == (64, LENGTHS[name])
    assert (samples(name)[:, 0] == VOCAB.special_tokens["BOS"]).all()
    assert not (samples(name)[:, 1:] == VOCAB.special_tokens["EOS"]).any()


@pytest.mark.parametrize("name", [n for n in PAPER_DISTRIBUTIONS if n != "caps"])
def test_log_prob_is_the_sum_of_position_log_probs(name: str) -> None:
    dist: InputDistribution = compiled(name).distribution()
    assert dist.is_factorized
    x = samples(name)
    expected = sum(cat.dense_log_probs(VOCAB.size)[x[:, j]] for j, cat in enumerate(dist.positions))
    log_prob = dist.log_prob(x)
    assert torch.isfinite(log_prob).all()
    torch.testing.assert_close(log_prob, torch.as_tensor(expected, dtype=log_prob.dtype))


def test_caps_log_prob_is_half_times_the_caps_positions() -> None:
    dist = compiled("caps").distribution()
    assert not dist.is_factorized
    caps = as_dict("caps", "caps")
    total = sum(caps.values())
    x = samples("caps")
    expected = [math.log(0.5) + sum(math.log(caps[int(t)] / total) for t in row[8:]) for row in x]
    torch.testing.assert_close(dist.log_prob(x), torch.tensor(expected, dtype=dist.log_prob(x).dtype))


def test_hex_tokens_are_lowercase_hex_weighted_by_length() -> None:
    position = compiled("hex").distribution().positions[1]
    probs = dict(zip(position.ids.tolist(), position.probs.tolist(), strict=True))
    assert probs.keys() == {i for i, s in enumerate(STRINGS) if i not in SPECIAL and s and set(s) <= HEX}
    assert len(probs) >= 200
    for j in range(1, 33):
        assert all(s and set(s) <= HEX for s in strings("hex", j))
    sizes = Counter(min(len(STRINGS[i]), 4) for i in probs)
    shares = {k: sum(p for i, p in probs.items() if min(len(STRINGS[i]), 4) == k) for k in sizes}
    assert all(probs[i] == pytest.approx(shares[min(len(STRINGS[i]), 4)] / sizes[min(len(STRINGS[i]), 4)])
               for i in probs)
    assert shares[1] > shares[2] > shares[3] > shares[4] > 0


def test_hex_weights_are_what_the_script_measures() -> None:
    """hex.lp's length-class weights are scripts/hex_weights.py's measurement, to 4 significant digits."""
    loader = importlib.util.spec_from_file_location("hex_weights", ROOT / "scripts" / "hex_weights.py")
    assert loader is not None and loader.loader is not None
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    measured = Counter[int]()
    for s, q in script.hex_token_frequencies(VOCAB).items():
        measured[min(len(s), 4)] += q
    spec = REGISTRY.distribution_spec("hex")
    for k in (1, 2, 3, 4):
        assert f"hex{k} @ {measured[k]:.4g}" in spec


@pytest.mark.parametrize(("name", "tokens", "table", "rule", "k", "minimum"), [
    ("camel", "camel", "code", is_camel, None, 200),
    ("colon", "code", "code", lambda s: True, 1024, 1024),
    ("if", "code", "code", lambda s: True, 1024, 1024),
    ("caps", "caps", "english", is_caps, 1024, 400),
    ("english", "start", "english", is_alpha, 2781, 2781),
    ("english", "mid", "english", is_mid, 2781, 2781),
    ("spanish", "es", "spanish", is_spanish, 1024, 1024),
    *[("icl", f"word_{c.lower()}", "english", word_rule(c), None, 3) for c in "ARCTHEOY"],
])
def test_token_sets_follow_the_papers_rules(name: str, tokens: str, table: str, rule: Callable[[str], bool],
                                            k: int | None, minimum: int) -> None:
    if name == "camel":  # the spec's camel set is unweighted; its position weights it by code frequency
        pos = compiled(name).distribution().positions[1]
        got = dict(zip(pos.ids.tolist(), pos.probs.tolist(), strict=True))
        expected = paper_set(table, rule, k)
        total = sum(expected.values())
        assert got.keys() == expected.keys()
        assert got == pytest.approx({i: w / total for i, w in expected.items()})
    else:
        assert as_dict(name, tokens) == paper_set(table, rule, k)
    assert len(compiled(name).token_sets[tokens]) >= minimum


def test_camel_colon_if_samples() -> None:
    assert all(is_camel(s) for j in range(1, 33) for s in strings("camel", j))
    assert set(strings("colon", 33)) == {":"}
    assert set(strings("if", 1)) == {" if"}


def test_caps_samples() -> None:
    x = samples("caps")
    pronouns = {VOCAB.decode(row[1:3].tolist()) for row in x}
    assert pronouns == {"He", "She"}
    assert {VOCAB.decode(row[3:8].tolist()) for row in x} == {' screamed: "'}
    assert all(is_caps(s) for j in range(8, 24) for s in strings("caps", j))


def test_english_and_spanish_samples() -> None:
    assert all(is_alpha(s) for s in strings("english", 1))
    assert all(is_mid(s) for j in range(2, 26) for s in strings("english", j))
    assert all(is_spanish(s) for j in range(1, 25) for s in strings("spanish", j))


def test_icl_samples_spell_arctheory_then_ask_for_a_letter() -> None:
    for j, letter in enumerate("ARCTHEORY"):
        assert set(strings("icl", 1 + 3 * j)) == {letter if j == 0 else f" {letter}"}
        assert set(strings("icl", 2 + 3 * j)) == {" for"}
        assert all(word_rule(letter)(s) for s in strings("icl", 3 + 3 * j))
    assert set(strings("icl", 28)) <= {f" {chr(c)}" for c in range(ord("A"), ord("Z") + 1)}
    assert len(compiled("icl").distribution().positions[28].ids) == 26
    assert set(strings("icl", 29)) == {" for"}


def test_specs_use_no_token_ids() -> None:
    """Portable to any tokenizer with frequency tables: only strings, regexes and resolvers, never ``#id``."""
    for name in PAPER_DISTRIBUTIONS:
        body = [line for line in REGISTRY.distribution_spec(name).splitlines() if not line.startswith("#")]
        assert "#" not in "\n".join(body)


def test_cli_check_and_sample_by_name() -> None:
    try:
        REGISTRY.model("lowprob-1l")
    except LowprobError as exc:
        pytest.skip(f"the trained model lowprob-1l is not loadable yet: {exc}")
    cli = CliRunner()
    checked = cli.invoke(main, ["check", "hex", "--model", "lowprob-1l"])
    assert checked.exit_code == 0, checked.output
    assert "dist main" in checked.output
    sampled = cli.invoke(main, ["sample", "hex", "-n", "3", "--model", "lowprob-1l"])
    assert sampled.exit_code == 0, sampled.output
    lines = sampled.output.strip().splitlines()
    assert len(lines) == 3
    assert all(set(line.split("'")[1].removeprefix("<|BOS|>")) <= HEX for line in lines)
