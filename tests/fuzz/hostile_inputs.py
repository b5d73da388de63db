"""Hostile command-line values and damaged experiment files, and the verdict on running one in-process.

Every case runs the real CLI (click's ``CliRunner``) on a validation-only path (``--dry-run``, or a value
refused at parse time), with one registry shared by all cases so each model loads once. A case passes when it
ends in a clean user error (exit 1 or 2, no traceback) or a valid dry-run plan, within :data:`CASE_SECONDS`;
the oracle below says, independently of the implementation, which values are valid, so a rejected valid value
and an accepted invalid one both fail.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import signal
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import strategies as st

import lowprob.cli as cli
from lowprob.plugins import Registry, load_registry

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "examples/specs/demo.lp")
EXAMPLES = sorted((ROOT / "examples/experiments").glob("*.toml"))
CASE_SECONDS = 5.0
"""A case running longer than this is a hang."""
HARD_STOP_SECONDS = 20.0
"""When a case is interrupted, so that one real hang cannot stall the suite."""
MAX_SEED = 2**63 - 1
SPECIAL = ["0", "-0", "1", "-1", "-5", "nan", "NaN", "inf", "-inf", "1e309", "2^70", "2^-1", "2^0", "2^63", "2^64",
           "2^12", "2^10", "0.5", "1.5", "1e3", "9223372036854775807", "9223372036854775808", "18446744073709551616",
           "-9223372036854775809", "1180591620717411303424", "abc", "", " ", "0x10", "1_000", "+3", "4096", "١٢",
           "2^99999999", "9" * 5000, "--", "-"]
"""Values every numeric option gets: zero, negatives, NaN, infinities, 2^70, fractions, strings, huge powers."""


SPECS = ["hex", "caps", DEMO, 'dist main = BOS "a" * 3', 'tokens t = /^a+$/\ndist main = BOS t * 2\n',
         'dist main = BOS "a"\ntarget x = argmax == "a"\n']
"""Specs ``check`` gets besides hostile values: registered names, the demo file, small inline texts."""


def values() -> st.SearchStrategy[str]:
    """A hostile value for a numeric option, as typed on a command line."""
    return st.one_of(st.sampled_from(SPECIAL), st.integers().map(str), st.integers(0, 5000).map(str),
                     st.floats(0.001, 0.999).map(repr),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.integers(-3, 80).map(lambda k: f"2^{k}"), st.text(max_size=6))


# ---- the oracle: which values are valid, written from the documented contract, not from the code ----

def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def integer(low: int, high: int | None = None) -> Callable[[str], bool]:
    """Valid: a whole number (as Python's ``int`` reads it) in ``[low, high]``."""
    return lambda v: (n := _int(v)) is not None and n >= low and (high is None or n <= high)


def count_value(text: str) -> int | None:
    """A count written as an integer or ``b^k`` with ``0 <= k <= 256``."""
    base, caret, exponent = text.strip().partition("^")
    if not caret:
        return _int(text)
    b, k = _int(base), _int(exponent)
    return b**k if b is not None and k is not None and 0 <= k <= 256 else None


def count(low: int, high: int) -> Callable[[str], bool]:
    return lambda v: (n := count_value(v)) is not None and low <= n <= high


def number(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
           ) -> Callable[[str], bool]:
    """Valid: a finite float in the range."""
    def valid(v: str) -> bool:
        try:
            x = float(v)
        except ValueError:
            return False
        return (math.isfinite(x) and (x > low if open_low else x >= low) and (x < high if open_high else x <= high))
    return valid


def anything(_: str) -> None:
    """No oracle: any clean outcome passes (the value goes to a plugin with its own rules)."""
    return None


Oracle = Callable[[str], "bool | None"]


@dataclass(frozen=True)
class Command:
    """A command line that validates without computing, and the oracle of each numeric option."""

    name: str
    base: Callable[[Path], list[str]]
    options: Mapping[str, Oracle]
    jointly_valid: Callable[[dict[str, str]], bool] = lambda flags: True
    values: Callable[[], st.SearchStrategy[str]] = values


def _gt_flags(flags: dict[str, str]) -> bool:
    samples = count_value(flags.get("--samples", "2^12")) or 0
    shard = count_value(flags.get("--shard-size", "2^10")) or 1
    first = _int(flags.get("--first-seed", "0")) or 0
    return samples % shard == 0 and samples // shard <= 2**20 and first + samples // shard - 1 <= MAX_SEED


GT_FILE = "gt.json"


def _show_base(tmp: Path) -> list[str]:
    return ["ground-truth", "show", str(tmp / GT_FILE)]


COMMANDS = {
    "estimate": Command("estimate", lambda tmp: ["estimate", DEMO, "--model", "random-1l", "--dry-run", "--samples",
                                                 "1"], {
        "--budget-calls": integer(1), "--budget-seconds": number(0, open_low=True),
        "--budget-rel-error": number(0, open_low=True), "--backward-weight": number(0),
        "--seed": integer(0, MAX_SEED), "--level": number(0, 1, open_low=True, open_high=True),
        "--samples": integer(0, 10_000), "-o": anything}),
    "sample": Command("sample", lambda tmp: ["sample", DEMO, "--model", "random-1l"], {
        "-n": integer(1, 10_000), "--seed": integer(0, MAX_SEED)}),
    "check": Command("check", lambda tmp: ["check"], {"--model": anything},
                     values=lambda: st.one_of(values(), st.sampled_from(SPECS))),
    "ground-truth run": Command("ground-truth run", lambda tmp: [
        "ground-truth", "run", DEMO, "--model", "random-1l", "--dry-run", "--output", str(tmp / "out" / "gt.json"),
        "--samples", "2^12", "--shard-size", "2^10"], {
        "--samples": count(1, 2**52), "--shard-size": count(1, 2**32), "--first-seed": integer(0, MAX_SEED),
        "--reservoir": integer(0, 4096), "--reservoir-max-p": number(0, 1), "--batch-size": integer(1, 2**24),
        "--device": lambda v: bool(re.fullmatch(r"cpu(:[0-9]+)?", v)) if not torch.cuda.is_available() else None},
        _gt_flags),
    "ground-truth show": Command("ground-truth show", _show_base, {"--top": integer(0)}),
}


def flag_sets(command: Command) -> st.SearchStrategy[dict[str, str]]:
    """One to three of ``command``'s numeric options, each with a hostile value."""
    return st.dictionaries(st.sampled_from(sorted(command.options)), command.values(), min_size=1, max_size=3)


def command_line(command: Command, flags: dict[str, str], tmp: Path) -> tuple[list[str], bool | None]:
    """The arguments and whether the oracle says they are valid (``None``: it cannot tell)."""
    args = command.base(tmp)
    verdicts: list[bool | None] = []
    for flag, value in flags.items():
        if command.name == "check":  # check has no numeric option: the hostile value is the spec itself
            args += [value, "--model", "random-1l"]
            verdicts.append(None)
            continue
        if flag == "-o":
            args += ["-o", f"batch_size={value}"]
        elif flag.startswith("--"):
            args.append(f"{flag}={value}")
        else:
            args += [flag, value] if value and not value.startswith("-") else [f"{flag}{value}"]
        verdicts.append(command.options[flag](value))
    if False in verdicts:
        return args, False
    if None in verdicts:
        return args, None
    return args, command.jointly_valid(flags)


# ---- experiment files: generated from the shipped examples, then mutated ----

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def to_toml(data: Mapping[str, Any]) -> str:
    """A TOML document for ``data`` (arrays of tables written as ``[[name]]`` sections)."""
    tables = {k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(t, dict) for t in v)}
    lines = [f"{_key(k)} = {_toml_value(v)}" for k, v in data.items() if k not in tables]
    for name, rows in tables.items():
        for row in rows:
            lines += ["", f"[[{_key(name)}]]", *(f"{_key(k)} = {_toml_value(v)}" for k, v in row.items())]
    return "\n".join(lines) + "\n"


def example(path: Path) -> dict[str, Any]:
    """An example experiment, with its spec paths made absolute (the mutated copy lives elsewhere), 1 seed, a
    small model and the output next to the copy."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for entry in data.get("distributions", []):
        if "spec" in entry and (path.parent / entry["spec"]).is_file():
            entry["spec"] = str((path.parent / entry["spec"]).resolve())
    data["output"] = "results.jsonl"
    data["models"] = ["random-1l"]
    return data


TOML_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 5, 2**63, 2**63 - 1, -(2**63), 2**70, 0.0, -0.0, 0.5, 1.0, 1.5, math.nan, math.inf,
                     -math.inf, 1e308, True, False, "", "x", "nan", "5", "paper", [], [0, 0], {}, {"a": 1}]),
    st.integers(), st.floats(), st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3))
"""Values a mutation puts in an experiment file."""


def _seed_ok(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_SEED


def _positive_finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v > 0


def _budget_valid(budget: Any) -> bool:
    """A budget table: exactly ``preset = "paper"``, or limits of the right type with at least one set."""
    if not isinstance(budget, dict):
        return False
    if "preset" in budget:
        return budget == {"preset": "paper"}
    checks = {"model_calls": lambda v: type(v) is int and v >= 1, "seconds": _positive_finite,
              "target_rel_error": _positive_finite,
              "backward_weight": lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0}
    return (set(budget) <= set(checks) and bool(set(budget) - {"backward_weight"})
            and all(checks[k](v) for k, v in budget.items()))


FIELD_ORACLES: dict[tuple[str, str], Callable[[Any], bool | None]] = {
    ("", "seeds"): lambda v: type(v) is list and len(v) >= 1 and all(_seed_ok(s) for s in v) and len(set(v)) == len(v),
    ("", "level"): lambda v: type(v) in (int, float) and 0 < v < 1,
    ("", "name"): lambda v: None if type(v) is str else False,
    ("", "output"): lambda v: None if type(v) is str else False,
    ("", "models"): lambda v: None if type(v) is list else False,
    ("estimators", "name"): lambda v: None if type(v) is str else False,
    ("estimators", "options"): lambda v: None if type(v) is dict else False,
    ("distributions", "targets"): lambda v: None if type(v) is list else False,
    ("distributions", "spec"): lambda v: None if type(v) is str else False,
    **{("budgets", key): _budget_valid for key in ("model_calls", "seconds", "target_rel_error", "backward_weight",
                                                     "preset")},
}
"""Per field, whether a value is valid (``None``: the oracle cannot tell, e.g. a name that may be registered);
a budget field is judged on the whole budget table it ends up in."""


def _first(data: dict[str, Any], section: str) -> dict[str, Any] | None:
    """The table a field mutation edits: the top level, or the first table of ``section`` (``None`` if gone)."""
    if not section:
        return data
    rows = data.get(section)
    return rows[0] if isinstance(rows, list) and rows and isinstance(rows[0], dict) else None


@dataclass
class Mutation:
    """One change to an experiment's data (or its text) and whether the result must be refused, judged on the
    data after every change (``late`` changes are applied after all field changes, so none is undone)."""

    description: str
    verdict: Callable[[dict[str, Any]], bool | None]
    apply: Callable[[dict[str, Any]], None] = lambda data: None
    text: Callable[[bytes], bytes] | None = None
    late: bool = False


def _constant(valid: bool | None) -> Callable[[dict[str, Any]], bool | None]:
    return lambda data: valid


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    """A field set to a hostile value, a key added or removed, a table duplicated, or bytes damaged."""
    kind = draw(st.sampled_from(["field", "field", "field", "unknown key", "remove", "duplicate", "bytes"]))
    if kind == "field":
        section, key = draw(st.sampled_from(sorted(FIELD_ORACLES)))
        value = draw(TOML_VALUES)

        def set_field(data: dict[str, Any]) -> None:
            target = _first(data, section)
            if target is None:
                return
            if key == "preset":
                target.clear()
            elif section == "budgets":
                target.pop("preset", None)
            target[key] = value

        def verdict(data: dict[str, Any]) -> bool | None:
            target = _first(data, section)
            if target is None or key not in target and section != "budgets":
                return None
            return FIELD_ORACLES[(section, key)](target if section == "budgets" else target[key])
        return Mutation(f"{section or '(top)'}.{key} = {value!r}", verdict, set_field)
    if kind == "unknown key":
        section = draw(st.sampled_from(["", "budgets", "estimators", "distributions"]))
        key = draw(st.sampled_from(["colour", "model_call", "seed", "Budget", "budget", "", "ä"]))

        def add_key(data: dict[str, Any]) -> None:
            target = _first(data, section)
            if target is not None:
                target[key] = 1
        return Mutation(f"unknown key {section}.{key}", lambda data: False if _first(data, section) else None,
                        add_key, late=True)
    if kind == "remove":
        key = draw(st.sampled_from(["name", "output", "distributions", "estimators", "budgets", "seeds", "level"]))
        required = key in ("name", "output", "distributions", "estimators", "budgets")
        return Mutation(f"remove {key}", _constant(False if required else None), lambda data: data.pop(key, None),
                        late=True)
    if kind == "duplicate":
        section = draw(st.sampled_from(["budgets", "estimators", "distributions"]))

        def duplicate(data: dict[str, Any]) -> None:
            if _first(data, section) is not None:
                data[section].append(copy.deepcopy(data[section][0]))
        return Mutation(f"duplicate {section}[0]", lambda data: False if _first(data, section) else None, duplicate,
                        late=True)
    damage = draw(st.sampled_from(["truncate", "insert", "utf16", "bom", "empty", "invalid utf-8", "nul"]))
    position = draw(st.floats(0, 1))
    junk = draw(st.binary(min_size=1, max_size=4))

    def damage_bytes(raw: bytes) -> bytes:
        at = int(position * len(raw))
        return {"truncate": raw[:at], "insert": raw[:at] + junk + raw[at:],
                "utf16": raw.decode("utf-8", "replace").encode("utf-16"), "bom": b"\xef\xbb\xbf" + raw, "empty": b"",
                "invalid utf-8": raw[:at] + b"\xff\xfe" + raw[at:], "nul": raw[:at] + b"\x00" + raw[at:]}[damage]
    # damaged bytes may still be a valid file (e.g. inserted spaces, a cut inside a trailing comment)
    return Mutation(f"bytes: {damage} at {position:.2f} ({junk!r})",
                    _constant(False if damage in ("utf16", "empty", "nul", "invalid utf-8") else None),
                    text=damage_bytes)


# ---- running a case ----

def warm_registry() -> Registry:
    """A registry with the random demo model loaded and the demo spec compiled once, so no case pays for it."""
    registry = load_registry()
    cli.compile_source(registry, cli.resolve_spec(DEMO, registry), model="random-1l")
    return registry


@contextlib.contextmanager
def shared_cli_registry() -> Iterator[Registry]:
    """One warm registry that every in-process CLI call uses while the block runs (the CLI builds a fresh one per
    call), so each model loads once per test module."""
    shared = warm_registry()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_registry", lambda: shared)
        yield shared


class _HardStop(BaseException):
    """Raised into a case that ran past :data:`HARD_STOP_SECONDS` (not an ``Exception``: no handler takes it)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _HardStop


def _invoke(args: list[str]) -> Any:
    previous = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, HARD_STOP_SECONDS)
    try:
        return CliRunner().invoke(cli.main, args)
    except _HardStop:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Tally:
    """Outcomes of the cases run so far, and the failing ones with their inputs."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def judge(self, args: list[str], valid: bool | None, ok_marker: str) -> str:
        """Run ``lowprob ARGS`` in-process and classify it; a failure is recorded with its arguments."""
        started = time.perf_counter()
        result = _invoke(args)
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        text = result.output if result is not None else ""
        code = result.exit_code if result is not None else None
        if result is None or elapsed > CASE_SECONDS:
            verdict = "hang"
        elif "Traceback" in text or not (result.exception is None or isinstance(result.exception, SystemExit)):
            verdict = "traceback"
        elif code == getattr(cli, "EXIT_INTERNAL_ERROR", 70):
            verdict = "internal error"
        elif code == 0:
            verdict = "silent acceptance" if valid is False else ("valid plan" if ok_marker in text else "no plan")
        elif code in (1, 2):
            verdict = "false rejection" if valid is True else "clean error"
        else:
            verdict = f"exit {code}"
        self.outcomes[verdict] += 1
        if verdict not in ("valid plan", "clean error"):
            shown = [a if len(a) < 200 else a[:200] + "..." for a in args]
            self.failures.append(f"{verdict} ({elapsed:.1f} s): {shown}\n{text[-1500:]}")
        return verdict

    def summary(self) -> str:
        total = sum(self.outcomes.values())
        return (f"{total} cases in {self.seconds:.1f} s: " + ", ".join(f"{k} {v}" for k, v in
                                                                      sorted(self.outcomes.items())))


PLAN_MARKERS = {"estimate": "dry run      nothing estimated", "sample": "  ", "check": ": ok (compiled for model",
                "ground-truth run": "to count", "ground-truth show": "samples in", "run": "estimates planned"}


def run_flag_case(tally: Tally, name: str, flags: dict[str, str], tmp: Path) -> str:
    """One generated flag set for command ``name``."""
    args, valid = command_line(COMMANDS[name], flags, tmp)
    return tally.judge(args, valid, PLAN_MARKERS[name])


def run_experiment_case(tally: Tally, source: Path, changes: list[Mutation], tmp: Path) -> str:
    """``source`` with ``changes`` applied, written to ``tmp`` and planned with ``lowprob run --dry-run``."""
    data = example(source)
    for change in sorted(changes, key=lambda c: c.late):
        change.apply(data)
    raw = to_toml(data).encode("utf-8")
    for change in changes:
        if change.text is not None:
            raw = change.text(raw)
    path = tmp / "experiment.toml"
    path.write_bytes(raw)
    verdicts = [c.verdict(data) for c in changes]
    valid = False if False in verdicts else (None if None in verdicts or not changes else True)
    return tally.judge(["run", str(path), "--dry-run"], valid, PLAN_MARKERS["run"])
