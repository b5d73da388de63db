"""Syntax tree → compiled token sets, input distributions and targets for one vocabulary."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch

from lowprob.core.distribution import Block, Categorical, InputDistribution
from lowprob.core.errors import LowprobError
from lowprob.core.generation import Sampling
from lowprob.core.output_target import ContainsToken, Equals, Event, OutputTarget, TextTest
from lowprob.core.target import ArgmaxIn, ArgmaxIs
from lowprob.core.token_set import TokenSet, TokenSetResolver
from lowprob.core.vocabulary import Vocabulary
from lowprob.dsl import syntax as s
from lowprob.dsl.errors import DslError, SourceText, shorten
from lowprob.dsl.formatter import format_branch, format_set, format_spec, format_string
from lowprob.dsl.parser import parse
from lowprob.dsl.set_evaluation import TokenSetEvaluator

LENGTH_CAP = 100_000
"""Longest dist compiled when no ``max_length`` is given (guards against ``x * 1000000000``)."""

_V = TypeVar("_V")


@dataclass(frozen=True)
class CompiledSpec:
    """Everything a spec defines, compiled for one vocabulary, by name and in definition order."""

    distributions: dict[str, InputDistribution]
    targets: dict[str, Event]
    token_sets: dict[str, TokenSet]
    filename: str = "<spec>"

    def distribution(self, name: str | None = None) -> InputDistribution:
        """The dist called ``name``; without one, the only dist or else the one named ``main``."""
        return self._pick("dist", self.distributions, name)

    def target(self, name: str | None = None) -> Event:
        """The target called ``name``; without one, the only target or else ``main``."""
        return self._pick("target", self.targets, name)

    def _pick(self, kind: str, table: Mapping[str, _V], name: str | None) -> _V:
        listing = ", ".join(table) or "(none)"
        if name is None:
            if len(table) == 1:
                return next(iter(table.values()))
            if "main" in table:
                return table["main"]
            problem = (
                f"the spec defines no {kind}"
                if not table
                else f"the spec defines {len(table)} {kind}s and none is named 'main'"
            )
            raise DslError(f"{problem}; {kind}s: {listing}", filename=self.filename)
        if name not in table:
            raise DslError(f"no {kind} named {name!r}; {kind}s: {listing}", filename=self.filename)
        return table[name]


def compile_spec(
    spec: s.Spec,
    vocab: Vocabulary,
    resolvers: Mapping[str, TokenSetResolver] | None = None,
    max_length: int | None = None,
) -> CompiledSpec:
    """Compile a parsed spec for ``vocab``; ``resolvers`` are plugins' token-set functions.

    ``max_length`` (the model's context) bounds every dist's length. A spec built by hand (no source
    text) is formatted and re-parsed first, so that errors can point into text.
    """
    if not spec.source:
        if s.too_deep(spec) is not None:  # the formatter recurses into nested constructs
            raise DslError(f"nested too deeply: more than {s.MAX_NESTING} levels", filename=spec.filename)
        spec = parse(format_spec(spec), spec.filename)
    return _Compiler(spec, vocab, dict(resolvers or {}), max_length).run()


def load_spec(
    text: str,
    vocab: Vocabulary,
    resolvers: Mapping[str, TokenSetResolver] | None = None,
    max_length: int | None = None,
    filename: str = "<spec>",
) -> CompiledSpec:
    """Parse and compile spec text in one step."""
    return compile_spec(parse(text, filename), vocab, resolvers, max_length)


class _Compiler:
    """Compiles statements in order; each may use only the definitions above it."""

    def __init__(
        self,
        spec: s.Spec,
        vocab: Vocabulary,
        resolvers: Mapping[str, TokenSetResolver],
        max_length: int | None,
    ) -> None:
        self.spec, self.vocab, self.max_length = spec, vocab, max_length
        self.source = SourceText(spec.source, spec.filename)
        self.sets = TokenSetEvaluator(vocab, resolvers, self.source, self._token_set)
        self.token_sets: dict[str, TokenSet] = {}
        self.dists: dict[str, InputDistribution] = {}
        self.targets: dict[str, Event] = {}
        self.generated: list[tuple[s.Continuation, int]] = []  # each output target's continuation and length
        self.lines: dict[str, int] = {}
        self.later: dict[str, int] = {}  # names defined further down, for "defined later" hints

    def run(self) -> CompiledSpec:
        if not self.spec.statements:
            raise DslError(
                "the spec is empty: it defines no dist",
                filename=self.spec.filename,
                hint="write at least one definition, as in: dist main = BOS uniform(vocab()) * 8",
            )
        for statement in reversed(self.spec.statements):
            self.later[statement.name] = statement.line
        for statement in self.spec.statements:
            if statement.name in self.lines:
                raise self.source.error(
                    statement,
                    f"{statement.name!r} is already defined on line {self.lines[statement.name]}",
                    "every definition needs its own name",
                )
            if self.later.get(statement.name) == statement.line:
                del self.later[statement.name]
            with self._located(statement):
                self._define(statement)
            self.lines[statement.name] = statement.line
        self._check_continuations()
        return CompiledSpec(self.dists, self.targets, self.token_sets, self.spec.filename)

    @contextmanager
    def _located(self, node: s.Node) -> Iterator[None]:
        """Re-raise errors from core, ``re`` and number handling as DslErrors at ``node``."""
        try:
            yield
        except DslError:
            raise
        except (LowprobError, ValueError, OverflowError, re.error) as exc:
            raise self.source.error(node, str(exc)) from None

    def _define(self, statement: s.Statement) -> None:
        if isinstance(statement, s.TokensDef):
            self.token_sets[statement.name] = self.sets.evaluate(statement.expr)
        elif isinstance(statement, s.DistDef):
            blocks = self._alternatives(statement.branches, statement)
            self.dists[statement.name] = InputDistribution(
                tuple(blocks), self.vocab.size, source=self.spec.source, name=statement.name
            )
        else:
            self.targets[statement.name] = self._target(statement.test)

    def _target(self, test: s.TargetIs | s.TargetIn | s.OutputTest) -> Event:
        if isinstance(test, s.OutputTest):
            return self._output(test)
        if isinstance(test, s.TargetIn):
            tokens = self.sets.evaluate(test.expr)
            return ArgmaxIn(frozenset(tokens.ids.tolist()), label=format_set(test.expr))
        if isinstance(test.token, str):
            return ArgmaxIs(self.sets.token_id(test.token, test), label=test.token)
        token_id = self.sets.check_id(test.token, test)
        return ArgmaxIs(token_id, label=self.vocab.token_string(token_id))

    def _output(self, test: s.OutputTest) -> Event:
        """An output event; ``greedy(1) == "t"`` and ``greedy(1) contains S`` are the next-token targets
        ``argmax == "t"`` and ``argmax in S``, which every estimator supports."""
        run = test.continuation
        length = run.length
        self._check_length(length + 1, run, f"{_spell(run)} with one input token before it",
                           "the input and the generated tokens must fit in it together")
        self.generated.append((run, length))
        options = {o.name: o.value for o in run.options}
        sampling = (Sampling.argmax() if run.mode == "greedy"
                    else Sampling.sample(float(options.get("temperature", 1.0)), _int_or_none(options.get("top_k"))))
        if isinstance(test.operand, str):
            if test.op == "matches":
                pattern, lead = test.operand.strip(), len(test.operand) - len(test.operand.lstrip())
                self.sets.text_pattern(pattern, test, 1 + lead)
                return OutputTarget(length, sampling, TextTest("matches", pattern))
            ids = self._continuation_ids(test, length)
            if test.op == "==":
                if length == 1 and sampling.greedy:
                    return ArgmaxIs(ids[0], label=test.operand)
                return OutputTarget(length, sampling, Equals(tuple(ids), test.operand))
            return OutputTarget(length, sampling, TextTest("startswith" if test.op == "startswith" else "contains",
                                                           test.operand))
        ids_set = frozenset(self.sets.evaluate(test.operand).ids.tolist())
        label = format_set(test.operand)
        if length == 1 and sampling.greedy:
            return ArgmaxIn(ids_set, label=label)
        return OutputTarget(length, sampling, ContainsToken(ids_set, label))

    def _continuation_ids(self, test: s.OutputTest, length: int) -> list[int]:
        """The tokens of the text ``test`` compares with; they must fit in the ``length`` generated ones (all of
        them, for ``==``)."""
        assert isinstance(test.operand, str)
        text = test.operand
        shown = format_string(shorten(text))
        if not text:
            raise self.source.error(test, "the empty string is no continuation",
                                    "every continuation starts with and contains the empty string: write some text")
        try:
            ids = self.vocab.encode(text)
        except ValueError as exc:
            raise self.source.error(test, f"no continuation can produce {shown}: {exc}") from None
        pieces = " ".join(format_string(self.vocab.token_string(i)) for i in ids[:8]) + " ..." * (len(ids) > 8)
        run = _spell(test.continuation)
        if test.op == "==" and len(ids) != length:
            raise self.source.error(
                test, f"{shown} is {len(ids)} token{'s' * (len(ids) != 1)}, but {run} generates {length}",
                f"'==' compares the whole continuation token by token; {shown} tokenizes as {pieces}")
        if len(ids) > length:
            raise self.source.error(
                test, f"{shown} is {len(ids)} tokens, more than the {length} that {run} generates",
                f"it tokenizes as {pieces}; generate at least {len(ids)} tokens")
        return ids

    def _check_continuations(self) -> None:
        """Every dist followed by every output target's continuation fits in the maximum length."""
        if not self.dists or not self.generated:
            return
        name, dist = max(self.dists.items(), key=lambda item: item[1].length)
        for run, length in self.generated:
            self._check_length(dist.length + length, run,
                               f"dist {name!r} ({dist.length} tokens) followed by the {length} tokens {_spell(run)} "
                               "generates", "the input and the generated tokens must fit in it together")

    # ---- name resolution

    def _token_set(self, ref: s.SetRef) -> TokenSet:
        if ref.name in self.token_sets:
            return self.token_sets[ref.name]
        self._not_here(ref.name, ref, "token set")
        raise self._unknown(ref.name, ref, "token set", list(self.token_sets))

    def _not_here(self, name: str, node: s.Node, wanted: str) -> None:
        """Raise if ``name`` is defined, but as a kind that cannot stand where ``wanted`` is."""
        if name in self.dists:
            raise self.source.error(
                node,
                f"{name!r} is a dist, but a {wanted} is needed here",
                "a dist is a whole sequence; define the tokens with `tokens NAME = ...` and use that name",
            )
        if name in self.targets:
            raise self.source.error(
                node,
                f"{name!r} is a target, but a {wanted} is needed here",
                "targets cannot be used inside other definitions",
            )

    def _unknown(self, name: str, node: s.Node, wanted: str, known: list[str]) -> DslError:
        """An unknown ``name``; ``wanted`` is "token set" or, in a dist, "token set or dist"."""
        kinds = "token sets" if wanted == "token set" else "token sets and dists"
        hint = None
        if name in self.later:
            hint = f"{name!r} is defined later, on line {self.later[name]}; a definition can only use the ones above it"
        elif wanted != "token set":
            hint = f'to use the text {name!r}, put it in quotes: "{name}"'
        listing = ", ".join(known) or "(none)"
        return self.source.error(node, f"unknown {wanted} {name!r}; {kinds} defined so far: {listing}", hint)

    # ---- distributions

    def _alternatives(self, branches: tuple[s.Branch, ...], node: s.Node) -> list[Block]:
        weighted = [b.weight is not None for b in branches]
        if any(weighted) and not all(weighted):
            odd = branches[weighted.index(not weighted[0])]
            raise self.source.error(
                odd,
                "either every alternative has a weight ('@ w') or none does",
                'write ("He" @ 0.3 | "She" @ 0.7) or ("He" | "She") for equal weights',
            )
        weights = [1.0 if b.weight is None else self.sets.check_weight(b.weight, b) for b in branches]
        runs = [self._items(b.items) for b in branches]
        if len(runs) == 1:
            return runs[0]
        lengths = [sum(block.length for block in run) for run in runs]
        if len(set(lengths)) > 1:
            shapes = "; ".join(
                f"{shorten(format_branch(b))} is {n} token{'s' * (n != 1)}"
                for b, n in zip(branches, lengths, strict=True)
            )
            raise self.source.error(
                node,
                "alternatives must all have the same number of tokens, got " + ", ".join(map(str, lengths)),
                shapes,
            )
        with self._located(node):
            return [Block.mixture(list(zip(weights, runs, strict=True)))]

    def _items(self, items: tuple[s.Item, ...]) -> list[Block]:
        """The blocks of a sequence of items; stops at the item where it grows past the maximum length."""
        blocks: list[Block] = []
        length = 0
        for item in items:
            more = self._item(item)
            length += sum(b.length for b in more)
            self._check_length(length, item, "the sequence up to here")
            blocks.extend(more)
        return blocks

    def _item(self, item: s.Item) -> list[Block]:
        if isinstance(item, s.TextItem):
            ids = self._encode(item)
            self._check_length(len(ids), item, "this text")
            return [Block.position(Categorical.constant(self.sets.check_id(i, item))) for i in ids]
        if isinstance(item, s.SpecialItem):
            specials = self.vocab.special_tokens
            if item.name not in specials:
                raise self.source.error(
                    item,
                    f"unknown special token {item.name!r}; this vocabulary's "
                    f"special tokens: {', '.join(sorted(specials)) or '(none)'}",
                )
            return [Block.position(Categorical.constant(self.sets.check_id(specials[item.name], item)))]
        if isinstance(item, s.NameItem):
            return self._name_item(item)
        if isinstance(item, s.SetItem):
            return [self._position(self.sets.evaluate(item.expr), item)]
        if isinstance(item, s.UniformItem):
            return [self._position(TokenSet(self.sets.evaluate(item.expr).ids), item)]
        if isinstance(item, s.WeightedItem):
            return [self._position(self._weighted(item), item)]
        if isinstance(item, s.Repeat):  # a chain x * 2 * 3 is unrolled, not recursed
            chain = []
            while isinstance(item, s.Repeat):
                chain.append(item)
                item = item.item
            blocks = self._item(item)
            for repeat in reversed(chain):
                self._check_length(sum(b.length for b in blocks) * repeat.count, repeat, "this repetition")
                blocks = blocks * repeat.count
            return blocks
        return self._alternatives(item.branches, item)

    def _encode(self, item: s.TextItem) -> list[int]:
        try:
            ids = self.vocab.encode(item.text)
        except ValueError as exc:
            raise self.source.error(item, f"cannot encode {format_string(shorten(item.text))}: {exc}") from None
        if not ids:
            raise self.source.error(
                item,
                "the empty string has no tokens",
                "remove it, or write the text the position should hold",
            )
        return ids

    def _name_item(self, item: s.NameItem) -> list[Block]:
        if item.name in self.dists:
            return list(self.dists[item.name].blocks)
        if item.name in self.token_sets:
            return [self._position(self.token_sets[item.name], item)]
        self._not_here(item.name, item, "token set or dist")
        raise self._unknown(item.name, item, "token set or dist", [*self.token_sets, *self.dists])

    def _weighted(self, item: s.WeightedItem) -> TokenSet:
        base, table = self.sets.evaluate(item.expr), self.sets.evaluate(item.weights)
        if table.weights is None:
            raise self.source.error(
                item.weights,
                "weighted(S, T) needs T to be a weighted set",
                "T's weights become the probabilities; for equal ones use uniform(S)",
            )
        inside = torch.isin(table.ids, base.ids)
        if not bool(inside.any()):
            raise self.source.error(
                item,
                "empty token set: no token of the first set has a weight in the second",
                "a token set must contain at least one token",
            )
        return TokenSet(table.ids[inside], table.weights[inside])

    def _position(self, tokens: TokenSet, node: s.Node) -> Block:
        with self._located(node):
            if tokens.weights is None:
                return Block.position(Categorical.uniform(tokens.ids))
            return Block.position(Categorical.from_weights(tokens.ids, tokens.weights))

    def _check_length(self, length: int, node: s.Node, what: str, why: str | None = None) -> None:
        """An error at ``node`` when ``what`` (``length`` tokens) is longer than the maximum length; ``why``
        adds to the hint."""
        limit = LENGTH_CAP if self.max_length is None else self.max_length
        if length > limit:
            hint = (
                "max_length is the model's context size"
                if self.max_length is not None
                else f"without max_length, dists are limited to {LENGTH_CAP} tokens"
            ) + (f"; {why}" if why else "")
            raise self.source.error(node, f"{what} is {length} tokens long, more than the maximum length {limit}", hint)


def _spell(run: s.Continuation) -> str:
    """``greedy(L)`` or ``sample(L)`` as written (options left out), for messages."""
    return f"{run.mode}({run.length})"


def _int_or_none(value: int | float | None) -> int | None:
    return None if value is None else int(value)
