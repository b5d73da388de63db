"""Hostile specs: generated from the grammar (its pieces, and lark's grammar itself through hypothesis) and
mutated from the shipped specs (as characters and as bytes).

Every case must end, within 2 s, in a clean ``DslError`` (a ``LowprobError`` with a printable, bounded message)
or in a compile whose every distribution, token set and target is valid (finite weights summing to 1, non-empty
supports, ids in the vocabulary, sampling and ``log_prob`` work). The default suite runs a few hundred cases;
``make test-fuzz`` (marker ``fuzz``) runs over 10 000 and prints the tally.
"""

from __future__ import annotations

import math
import signal
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import FrameType

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from lowprob.core.errors import LowprobError
from lowprob.core.token_set import TokenSet, TokenSetResolver
from lowprob.core.vocabulary import Vocabulary
from lowprob.dsl import CompiledSpec, DslError, load_spec, read_spec_file
from lowprob.dsl.parser import grammar_text
from lowprob.plugins import load_registry
from lowprob.plugins.builtin.hf_vocab import builtin_vocabulary
from lowprob.plugins.builtin.tokenizers import default_vocabulary

ROOT = Path(__file__).resolve().parents[2]
SEEDS = sorted((ROOT / "plugins/builtin/data/distributions").glob("*.lp")) + sorted(
    (ROOT / "examples/specs").glob("*.lp")
)
CASE_SECONDS = 2.0
"""Most CPU seconds a case may take (a slower one counts as a hang)."""
HARD_STOP_SECONDS = 10.0
"""CPU seconds after which a case is interrupted, so that one real hang cannot stall the suite."""
MESSAGE_CHARS = 3000
"""Longest printed error accepted as clean."""


# ---- what the cases run against


@cache
def _registry_resolvers() -> dict[str, TokenSetResolver]:
    return dict(load_registry(entry_points=False).token_set_resolvers())


@cache
def vocabularies() -> dict[str, Vocabulary]:
    """The paper's specs target the built-in BPE tokenizer; examples/ target the default model's vocabulary."""
    return {"builtin": builtin_vocabulary(), "default": default_vocabulary()}


def vocabulary_for(seed: Path) -> Vocabulary:
    return vocabularies()["default" if seed.parent.name == "specs" else "builtin"]


# ---- generation from the grammar's pieces

NAMES = ["hex", "words", "caps", "nope", "main", "where", "t", "x_1"]
PRELUDE = 'tokens hex = /^[0-9a-f]+$/\ntokens words = freq("english")\ntokens caps = /^[A-Z]+$/\n'
NUMBERS = [
    "0",
    "1",
    "2",
    "3",
    "-1",
    "0.5",
    "64",
    "65",
    "+7",
    ".5",
    "1.",
    "1e308",
    "1e309",
    "1e-400",
    "5e-324",
    "2e-308",
    "1e999",
    "100000000000",
    "9" * 400,
    "0e5",
]
STRINGS = [
    '"a"',
    '"the"',
    '" the"',
    '"He"',
    '""',
    '"\\q"',
    '"\\x41"',
    '"\\n"',
    '"é"',
    '"<bos>"',
    '"a' + "b" * 300 + '"',
    '"' + "x" * 3000 + '"',
    '"\\x00"',
]
SLOW_REGEXES = ["/^(-+)+!/", "/(.*)*\\x00/", "/^(a|aa)+$/", "/^(\\d+)*\\D$/"]
"""Patterns that may backtrack catastrophically: each costs its full second when it does, so they are rare."""
REGEXES = [
    "/^[a-z]+$/",
    "/e/",
    "/[/",
    "/(/",
    "/^\\w{3,}$/",
    "/x{0,99999}/",
    "/" + "(" * 300 + "a" + ")" * 300 + "/",
    "/\\/",
    "/(?P<a>x)(?P=a)/",
    "/^ [A-Z]$/",
]
regexes = st.sampled_from(REGEXES * 10 + SLOW_REGEXES)
COMPARE = ["==", "!=", "<", "<=", ">", ">="]


def _chain(parts: st.SearchStrategy[str], atoms: st.SearchStrategy[str], ops: list[str]) -> st.SearchStrategy[str]:
    """Operands joined by operators: a few (from ``parts``), or hundreds of ``atoms`` (chains must not recurse)."""
    short = st.tuples(st.lists(parts, min_size=1, max_size=4), st.sampled_from(ops)).map(
        lambda t: f" {t[1]} ".join(t[0])
    )
    long = st.tuples(atoms, st.sampled_from(ops), st.integers(100, 2000)).map(lambda t: f" {t[1]} ".join([t[0]] * t[2]))
    return st.one_of(short, short, short, long)


def _nested(inner: st.SearchStrategy[str], open_: str, close: str) -> st.SearchStrategy[str]:
    """``inner`` inside ``open_ ... close``, once or up to 300 times (nesting must be limited, not crash)."""
    return st.tuples(inner, st.sampled_from([1, 1, 1, 2, 49, 60, 300])).map(
        lambda t: open_ * t[1] + t[0] + close * t[1]
    )


numbers = st.sampled_from(NUMBERS)
strings = st.sampled_from(STRINGS)
filters = st.deferred(
    lambda: st.one_of(
        st.tuples(st.sampled_from(COMPARE), numbers).map(lambda t: f"len {t[0]} {t[1]}"),
        st.tuples(st.sampled_from(["startswith", "endswith"]), strings).map(" ".join),
        regexes.map("matches {}".format),
        filters.map("not {}".format),
        st.integers(2, 600).flatmap(lambda n: filters.map(lambda f: "not " * n + f)),
        _chain(filters, st.sampled_from(["len > 1", 'startswith "a"', "matches /e/"]), ["and", "or"]),
        _nested(filters, "(", ")"),
    )
)
set_exprs = st.deferred(
    lambda: st.one_of(
        st.sampled_from(NAMES),
        regexes,
        st.sampled_from(
            [
                "vocab()",
                "specials()",
                'freq("english")',
                'freq("nope")',
                "vocab(1)",
                "{}",
                "{0, 8191}",
                "{8192}",
                '{"a": 1e308, "b": 1e308}',
                '{"a": 1e308, "a": 1e308}',
                '{"the": 1, "a"}',
            ]
        ),
        st.lists(st.tuples(strings | numbers, st.none() | numbers), min_size=1, max_size=5).map(
            lambda es: "{" + ", ".join(e if w is None else f"{e}: {w}" for e, w in es) + "}"
        ),
        st.tuples(numbers, set_exprs).map(lambda t: f"top({t[0]}, {t[1]})"),
        _chain(set_exprs, st.sampled_from(["hex", "vocab()", "{1, 2}", "/a/"]), ["|", "&", "-"]),
        st.tuples(set_exprs, filters).map(lambda t: f"{t[0]} where {t[1]}"),
        _nested(set_exprs, "(", ")"),
    )
)
items = st.deferred(
    lambda: st.one_of(
        strings,
        st.sampled_from(["BOS", "EOS", 'special("BOS")', 'special("SEP")', "hex", "caps", "nope", "main"]),
        set_exprs.map("[{}]".format),
        set_exprs.map("uniform({})".format),
        st.tuples(set_exprs, set_exprs).map(lambda t: f"weighted({t[0]}, {t[1]})"),
        st.tuples(items, st.lists(numbers, min_size=1, max_size=3)).map(
            lambda t: t[0] + "".join(f" * {n}" for n in t[1])
        ),
        st.integers(2, 600).flatmap(lambda n: items.map(lambda i: i + " * 1" * n)),
        _nested(alternatives, "(", ")"),
    )
)
branches = st.tuples(st.lists(items, min_size=1, max_size=4), st.none() | numbers).map(
    lambda t: " ".join(t[0]) + ("" if t[1] is None else f" @ {t[1]}")
)
alternatives = st.lists(branches, min_size=1, max_size=4).map(" | ".join)
statements = st.one_of(
    st.tuples(st.sampled_from(NAMES), set_exprs).map(lambda t: f"tokens {t[0]} = {t[1]}"),
    st.tuples(st.sampled_from(NAMES), alternatives).map(lambda t: f"dist {t[0]} = {t[1]}"),
    st.tuples(
        st.sampled_from(NAMES),
        st.one_of(strings, st.sampled_from(["#0", "#8191", "#8192", "#" + "9" * 30, "#" + "9" * 5000])),
    ).map(lambda t: f"target {t[0]} = argmax == {t[1]}"),
    st.tuples(st.sampled_from(NAMES), set_exprs).map(lambda t: f"target {t[0]} = argmax in {t[1]}"),
    st.sampled_from(["# a comment", "", "\ufeff", "\r", "\t"]),
)
generated = st.tuples(st.booleans(), st.lists(statements, max_size=5)).map(
    lambda t: (PRELUDE if t[0] else "") + "\n".join(t[1])
)


# ---- mutation of the shipped specs

ALPHABET = [
    *'()[]{}|&-*@=:,.<>!"/\\#\n\t ',
    "where",
    "and",
    "or",
    "not",
    "dist ",
    "tokens ",
    "target ",
    "argmax",
    "BOS",
    "EOS",
    "1e309",
    "0",
    "#8192",
    "\ufeff",
    "\x00",
    "\udcff",
    "\ud800",
    "é",
    "\u202e",
    "\r",
    "ℕ",
    "(" * 300,
    " & hex" * 600,
    " * 1" * 600,
    "not " * 600,
    "a" * 5000,
]
BYTES = [b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\xc3", b"\xe2\x82", b"\x00", b"\x80", b"\xed\xa0\x80"]


@st.composite
def mutated_text(draw: st.DrawFn) -> tuple[Path, str]:
    seed = draw(st.sampled_from(SEEDS))
    text = seed.read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + draw(st.sampled_from([0, 1, 3, 20, 200])))))
        kind = draw(st.sampled_from(["replace", "delete", "duplicate", "truncate"]))
        if kind == "replace":
            text = text[:start] + "".join(draw(st.lists(st.sampled_from(ALPHABET), max_size=3))) + text[end:]
        elif kind == "delete":
            text = text[:start] + text[end:]
        elif kind == "duplicate":
            text = text[:end] + text[start:end] * draw(st.integers(1, 50)) + text[end:]
        else:
            text = text[:start]
    return seed, text


@st.composite
def mutated_bytes(draw: st.DrawFn) -> tuple[Path, bytes]:
    seed = draw(st.sampled_from(SEEDS))
    data = seed.read_bytes()
    if draw(st.integers(0, 9)) == 0:
        return seed, seed.read_text(encoding="utf-8").encode(
            draw(st.sampled_from(["utf-16", "utf-16-be", "latin-1"])), "replace"
        )
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        piece = draw(st.sampled_from(BYTES)) if draw(st.booleans()) else bytes([draw(st.integers(0, 255))])
        data = data[:at] + piece + data[at + draw(st.integers(0, 2)) :]
    return seed, data


# ---- running and judging one case


@dataclass
class Tally:
    """Outcomes by kind, the slowest case (CPU s), and the first few bad cases (kind, input, what went wrong)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    bad: list[tuple[str, str, str]] = field(default_factory=list)

    def record(self, outcome: str, spec: str | bytes, detail: str, seconds: float) -> None:
        self.outcomes[outcome] += 1
        self.slowest = max(self.slowest, seconds)
        if outcome not in ("error", "compile") and len(self.bad) < 10:
            self.bad.append((outcome, repr(spec)[:300], detail[-1500:]))

    @property
    def cases(self) -> int:
        return sum(self.outcomes.values())

    def summary(self) -> str:
        kinds = ("error", "compile", "traceback", "hang", "silent", "unclean")
        return (
            f"{self.cases} cases: "
            + ", ".join(f"{k} {self.outcomes[k]}" for k in kinds)
            + (f"; slowest {self.slowest:.2f} s")
        )


class _HardStop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _HardStop


def invalid(compiled: CompiledSpec, vocab: Vocabulary) -> str | None:
    """Why a compiled spec is semantically invalid (a silent acceptance), or ``None`` when it is valid."""
    for name, tokens in compiled.token_sets.items():
        if problem := _bad_set(tokens, vocab.size):
            return f"tokens {name}: {problem}"
    for name, target in compiled.targets.items():
        ids = target.token_ids
        if not ids or min(ids) < 0 or max(ids) >= vocab.size:
            return f"target {name}: ids {ids[:5]}"
    for name, dist in compiled.distributions.items():
        if dist.length < 1:
            return f"dist {name}: no positions"
        for block in dist.blocks:
            w = block.weights
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not math.isclose(float(w.sum()), 1.0):
                return f"dist {name}: block weights {w.tolist()[:5]}"
            for comp in block.components:
                for cat in comp:
                    if problem := _bad_categorical(cat.ids, cat.probs, vocab.size):
                        return f"dist {name}: {problem}"
        rows = dist.sample(3, torch.Generator().manual_seed(0))
        if rows.shape != (3, dist.length) or not bool(torch.isfinite(dist.log_prob(rows)).all()):
            return f"dist {name}: samples {rows.tolist()} have log_prob {dist.log_prob(rows).tolist()}"
    return None


def _bad_set(tokens: TokenSet, size: int) -> str | None:
    if len(tokens) == 0 or int(tokens.ids.min()) < 0 or int(tokens.ids.max()) >= size:
        return f"ids {tokens.ids.tolist()[:5]}"
    if tokens.weights is not None and not bool((torch.isfinite(tokens.weights) & (tokens.weights > 0)).all()):
        return f"weights {tokens.weights.tolist()[:5]}"
    return None


def _bad_categorical(ids: torch.Tensor, probs: torch.Tensor, size: int) -> str | None:
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= size:
        return f"categorical ids {ids.tolist()[:5]}"
    if not bool((torch.isfinite(probs) & (probs > 0)).all()) or not math.isclose(float(probs.sum()), 1.0):
        return f"categorical probs {probs.tolist()[:5]}"
    return None


def run_case(spec: str | bytes, vocab: Vocabulary, tally: Tally, workdir: Path) -> None:
    """Compile one spec (bytes go through a file), judge the outcome and record it.

    Time is CPU time (the machine may be busy); a case is stopped after HARD_STOP_SECONDS of it, or of wall time
    ten times that (a hang that does not compute).
    """
    handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGPROF, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_PROF, HARD_STOP_SECONDS)
    signal.setitimer(signal.ITIMER_REAL, 10 * HARD_STOP_SECONDS)
    start = time.process_time()
    try:
        if isinstance(spec, bytes):
            path = workdir / "case.lp"
            path.write_bytes(spec)
            text, filename = read_spec_file(path), str(path)
        else:
            text, filename = spec, "<fuzz>"
        compiled = load_spec(text, vocab, _registry_resolvers(), max_length=64, filename=filename)
        problem = invalid(compiled, vocab)
        outcome, detail = ("silent", problem) if problem else ("compile", "")
    except DslError as exc:
        message = str(exc)
        printable = message.encode("utf-8", "strict") and len(message) <= MESSAGE_CHARS
        outcome, detail = ("error", "") if printable else ("unclean", message[:500])
    except _HardStop:
        outcome, detail = "hang", traceback.format_exc()
    except Exception:  # anything else is what this suite exists to find
        outcome, detail = "traceback", traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    seconds = time.process_time() - start
    if seconds > CASE_SECONDS and outcome in ("error", "compile"):
        outcome, detail = "hang", f"took {seconds:.2f} s"
    tally.record(outcome, spec, detail, seconds)


def fuzz(strategy: st.SearchStrategy[tuple[Vocabulary, str | bytes]], cases: int, workdir: Path) -> Tally:
    """Run ``cases`` examples of ``strategy`` (fixed seed) and return the tally."""
    tally = Tally()

    @settings(
        max_examples=cases, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def one(case: tuple[Vocabulary, str | bytes]) -> None:
        run_case(case[1], case[0], tally, workdir)

    one()
    return tally


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[tuple[Vocabulary, str | bytes]]]] = {
    "generated": lambda: generated.map(lambda text: (vocabularies()["builtin"], text)),
    "from the grammar": lambda: from_lark(Lark(grammar_text(), parser="lalr")).map(
        lambda text: (vocabularies()["builtin"], text)
    ),
    "mutated text": lambda: mutated_text().map(lambda c: (vocabulary_for(c[0]), c[1])),
    "mutated bytes": lambda: mutated_bytes().map(lambda c: (vocabulary_for(c[0]), c[1])),
}


def check(tally: Tally, cases: int) -> None:
    print(tally.summary())
    assert tally.cases >= cases
    assert tally.outcomes["error"] + tally.outcomes["compile"] == tally.cases, tally.bad
    assert tally.outcomes["compile"] > 0 and tally.outcomes["error"] > 0  # both paths were exercised


def test_the_judge_tells_outcomes_apart(tmp_path: Path) -> None:
    """A valid shipped spec compiles, and a hostile one is a clean error."""
    tally, seed = Tally(), SEEDS[0]
    run_case(seed.read_text(encoding="utf-8"), vocabulary_for(seed), tally, tmp_path)
    run_case(b'dist main = BOS "\xff"\n', vocabularies()["builtin"], tally, tmp_path)
    assert tally.outcomes == Counter({"compile": 1, "error": 1}), tally.bad
    assert issubclass(DslError, LowprobError)


QUICK = {"generated": 60, "from the grammar": 100, "mutated text": 150, "mutated bytes": 100}
"""Cases per kind in the default suite (about 20 s in all; generating from lark's grammar is the slowest). Since the
grammar has output-event targets, fewer of lark's random specs hold a dist, and 100 are needed for some to compile."""
FULL = {"generated": 3000, "from the grammar": 1000, "mutated text": 4000, "mutated bytes": 2000}
"""Cases per kind in ``make test-fuzz``: 10 000 in all."""


@pytest.mark.parametrize("kind", list(QUICK))
def test_hostile_specs_quick(kind: str, tmp_path: Path) -> None:
    check(fuzz(STRATEGIES[kind](), QUICK[kind], tmp_path), QUICK[kind])


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", list(FULL))
def test_hostile_specs(kind: str, tmp_path: Path) -> None:
    check(fuzz(STRATEGIES[kind](), FULL[kind], tmp_path), FULL[kind])
