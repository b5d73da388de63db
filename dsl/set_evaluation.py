"""Evaluation of token-set expressions against a vocabulary: regexes, explicit sets, set algebra
with weights, ``where`` filters, the built-ins ``vocab()`` and ``top(N, S)``, injected resolvers."""

from __future__ import annotations

import math
import operator
import re
import time
from collections.abc import Callable, Mapping
from functools import cached_property

import torch

from lowprob.core.errors import LowprobError, WeightError
from lowprob.core.regex_scan import SCAN_SECONDS, SPEC_SCAN_SECONDS, compile_pattern, search_all
from lowprob.core.token_set import ResolverArg, TokenSet, TokenSetResolver
from lowprob.core.vocabulary import Vocabulary, token_strings
from lowprob.dsl import syntax as s
from lowprob.dsl.errors import DslError, SourceText, shorten
from lowprob.dsl.formatter import format_number, format_string

BUILTINS = ("top", "vocab")
"""Functions every spec can call; they take precedence over injected resolvers of the same name."""

_COMPARE: dict[str, Callable[[int, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_EMPTY_HINT = "a token set must contain at least one token"


MAX_SET_OPERATIONS = 2000
"""Most set operations (``|``, ``&``, ``-``, ``where``) one spec may evaluate: each costs a pass over up to the
whole vocabulary, so a 100 000-character chain would otherwise take tens of seconds."""


class TokenSetEvaluator:
    """Turns set expressions into non-empty token sets; every failure is a DslError at its node.

    ``lookup`` resolves a reference to an earlier ``tokens`` definition (or raises a DslError).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        resolvers: Mapping[str, TokenSetResolver],
        source: SourceText,
        lookup: Callable[[s.SetRef], TokenSet],
    ) -> None:
        self.vocab, self.resolvers, self.source, self._lookup = vocab, resolvers, source, lookup
        self._matches: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # pattern -> (scanned, matched) per id
        self._scan_left = SPEC_SCAN_SECONDS
        self._operations = 0

    @cached_property
    def _strings(self) -> list[str]:
        return token_strings(self.vocab)

    @cached_property
    def _plain_ids(self) -> torch.Tensor:
        special = set(self.vocab.special_tokens.values())
        return torch.tensor([i for i in range(self.vocab.size) if i not in special], dtype=torch.int64)

    @cached_property
    def _by_string(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for i in [*self._plain_ids.tolist(), *sorted(self.vocab.special_tokens.values())]:
            table.setdefault(self._strings[i], i)
        return table

    def evaluate(self, expr: s.SetExpr) -> TokenSet:
        """The token set ``expr`` denotes; an empty one is an error at the node that produced it.

        A chain of operators (``a | b - c ...``, ``a where ... where ...``) is folded from its left end
        iteratively; only right operands recurse, and their depth is bounded by the parser.
        """
        spine: list[s.SetOp | s.Where] = []
        node = expr
        while isinstance(node, s.SetOp | s.Where):
            spine.append(node)
            node = node.left if isinstance(node, s.SetOp) else node.expr
        result = self._nonempty(*self._leaf(node), node)
        for link in reversed(spine):
            self._operations += 1
            if self._operations > MAX_SET_OPERATIONS:
                raise self.source.error(link, f"more than {MAX_SET_OPERATIONS} set operations in one spec",
                                        "name a set once (tokens NAME = ...) and refer to it, or move a long list "
                                        "into a token-set plugin (a resolver)")
            step = self._where(result, link) if isinstance(link, s.Where) else self._algebra(result, link)
            result = self._nonempty(*step, link)
        return result

    def _nonempty(self, tokens: TokenSet, reason: str, node: s.SetExpr) -> TokenSet:
        if len(tokens) == 0:
            raise self.source.error(node, f"empty token set: {reason}", _EMPTY_HINT)
        return tokens

    def token_id(self, text: str, node: s.Node) -> int:
        """The single token whose string is (or encodes from) ``text``, else a DslError."""
        if text in self._by_string:
            return self._by_string[text]
        try:
            ids = self.vocab.encode(text)
        except ValueError as exc:
            raise self.source.error(
                node,
                f"{format_string(shorten(text))} is not a token",
                f"the vocabulary cannot encode it: {exc}",
            ) from None
        if len(ids) == 1:
            return ids[0]
        pieces = " ".join(format_string(self._strings[i]) for i in ids[:8]) + (" ..." if len(ids) > 8 else "")
        raise self.source.error(
            node,
            f"{format_string(shorten(text))} is not a single token",
            f"it tokenizes as {pieces} ({len(ids)} tokens)",
        )

    def check_id(self, token_id: int, node: s.Node) -> int:
        """``token_id`` if it is in the vocabulary; else a DslError."""
        if token_id >= self.vocab.size:
            raise self.source.error(
                node,
                f"token id {token_id} is outside the vocabulary (ids 0..{self.vocab.size - 1})",
            )
        return token_id

    def _leaf(self, expr: s.SetRef | s.RegexSet | s.ExplicitSet | s.SetCall) -> tuple[TokenSet, str]:
        """The set an operand that is not an operator denotes and, for when it is empty, why."""
        if isinstance(expr, s.SetRef):
            return self._lookup(expr), f"{expr.name} is empty"
        if isinstance(expr, s.RegexSet):
            keep = self._matching(self._regex(expr.pattern, expr), self._plain_ids, expr)
            return TokenSet(self._plain_ids[keep]), f"/{shorten(expr.pattern)}/ matches no token"
        if isinstance(expr, s.ExplicitSet):
            return self._explicit(expr), "{} has no entries"
        return self._call(expr), f"{expr.name}() returned no tokens"

    def _where(self, base: TokenSet, expr: s.Where) -> tuple[TokenSet, str]:
        return _subset(base, self._passing(expr.filter, base.ids)), "no token passes the filter"

    def _algebra(self, left: TokenSet, expr: s.SetOp) -> tuple[TokenSet, str]:
        right = self.evaluate(expr.right)
        if expr.op == "-":
            return _subset(left, ~torch.isin(left.ids, right.ids)), "the difference is empty"
        if expr.op == "&":
            inside = torch.isin(left.ids, right.ids)
            if left.weighted or not right.weighted:
                return _subset(left, inside), "the intersection is empty"
            return _subset(right, torch.isin(right.ids, left.ids)), "the intersection is empty"
        if left.weighted != right.weighted:
            raise self.source.error(
                expr,
                "cannot take the union of a weighted and an unweighted set",
                "give both sides weights (they add up) or neither",
            )
        ids = torch.cat([left.ids, right.ids])
        if left.weights is None or right.weights is None:
            return TokenSet.of(ids), "the union is empty"
        union = self._weighted_set(ids, torch.cat([left.weights, right.weights]), expr, "the union")
        return union, "the union is empty"

    def _weighted_set(
        self, ids: list[int] | torch.Tensor, weights: list[float] | torch.Tensor, node: s.SetExpr, what: str
    ) -> TokenSet:
        """``TokenSet.of`` with weights; a failure (repeated tokens' weights adding up to infinity) is at ``node``."""
        try:
            return TokenSet.of(ids, weights, what=what)
        except WeightError as exc:
            raise self.source.error(node, str(exc)) from None

    def _test(self, test: Callable[[str], bool], ids: torch.Tensor) -> torch.Tensor:
        """A mask over ``ids`` of the tokens whose string passes ``test``."""
        return torch.tensor([test(self._strings[i]) for i in ids.tolist()], dtype=torch.bool)

    def _matching(
        self, pattern: re.Pattern[str], ids: torch.Tensor, node: s.Node
    ) -> torch.Tensor:
        """A mask over ``ids`` of the tokens containing a match: each token is scanned at most once per pattern,
        under a time limit per pattern and one for the whole spec."""
        size = self.vocab.size
        scanned, matched = self._matches.setdefault(
            pattern.pattern, (torch.zeros(size, dtype=torch.bool), torch.zeros(size, dtype=torch.bool)))
        todo = ids[~scanned[ids]]
        if len(todo):
            limit = min(SCAN_SECONDS, self._scan_left)
            start = time.process_time()
            try:
                if limit <= 0:
                    raise TimeoutError
                found = search_all(pattern, [self._strings[i] for i in todo.tolist()], limit)
            except TimeoutError:
                raise self._too_slow(pattern, node, limit < SCAN_SECONDS) from None
            finally:
                self._scan_left -= time.process_time() - start
            matched[todo] = torch.tensor(found, dtype=torch.bool)
            scanned[todo] = True
        return matched[ids]

    def _too_slow(self, pattern: re.Pattern[str], node: s.Node, spec_limit: bool) -> DslError:
        if spec_limit:
            return self.source.error(
                node, f"the spec's regular expressions took more than {SPEC_SCAN_SECONDS:g} s in all to match the "
                f"vocabulary (stopped at /{shorten(pattern.pattern)}/)",
                "define each token set once (tokens NAME = /.../) and refer to it by name")
        return self.source.error(
            node,
            f"the regular expression /{shorten(pattern.pattern)}/ took more than {SCAN_SECONDS:g} s "
            "to match the vocabulary",
            "it backtracks catastrophically: avoid nested or overlapping repetition such as (a+)+ or (a|aa)+",
        )

    def _regex(self, pattern: str, node: s.Node, offset: int = 1) -> re.Pattern[str]:
        """``pattern`` compiled; an invalid one is an error at its offending character, ``offset`` characters
        after ``node`` being the pattern's first (the node starts at the opening slash)."""
        try:
            return compile_pattern(pattern)
        except re.error as exc:
            raise self.source.error(node, f"invalid regular expression: {exc.msg}", offset=offset + (exc.pos or 0)) \
                from None

    def text_pattern(self, pattern: str, node: s.Node, offset: int) -> re.Pattern[str]:
        """``pattern`` compiled for matching generated text, and scanned once over the vocabulary under the
        spec's regex time limits, so that one that backtracks catastrophically fails here rather than mid-run."""
        compiled = self._regex(pattern, node, offset)
        self._matching(compiled, self._plain_ids, node)
        return compiled

    def _passing(self, condition: s.Filter, ids: torch.Tensor) -> torch.Tensor:
        """A mask over ``ids`` of the tokens passing ``condition``.

        ``and``/``or`` short-circuit: the right operand sees only the tokens the left leaves undecided.
        Chains of ``and``/``or`` and of ``not`` are walked iteratively.
        """
        spine: list[s.BoolFilter] = []
        node = condition
        while isinstance(node, s.BoolFilter):
            spine.append(node)
            node = node.left
        negate = False
        while isinstance(node, s.NotFilter):
            negate, node = not negate, node.operand
        mask = self._passing(node, ids) if isinstance(node, s.BoolFilter) else self._atom(node, ids)
        if negate:
            mask = ~mask
        for link in reversed(spine):
            undecided = mask.clone() if link.op == "and" else ~mask
            if bool(undecided.any()):
                mask[undecided] = self._passing(link.right, ids[undecided])
        return mask

    def _atom(self, condition: s.LenFilter | s.AffixFilter | s.MatchesFilter, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(condition, s.LenFilter):
            compare, bound = _COMPARE[condition.op], condition.value
            return self._test(lambda text: compare(len(text), bound), ids)
        if isinstance(condition, s.AffixFilter):
            affix = condition.text
            if condition.kind == "startswith":
                return self._test(lambda text: text.startswith(affix), ids)
            return self._test(lambda text: text.endswith(affix), ids)
        return self._matching(self._regex(condition.pattern, condition), ids, condition)

    def _explicit(self, expr: s.ExplicitSet) -> TokenSet:
        weighted = [e.weight is not None for e in expr.entries]
        if any(weighted) and not all(weighted):
            odd = expr.entries[weighted.index(not weighted[0])]
            raise self.source.error(
                odd,
                "either every entry of {...} has a weight or none does",
                'write {"He": 0.5, "She": 0.5} or {"He", "She"}',
            )
        ids = [
            self.token_id(e.token, e) if isinstance(e.token, str) else self.check_id(e.token, e) for e in expr.entries
        ]
        if not any(weighted):
            return TokenSet.of(ids)
        weights = [self.check_weight(e.weight, e) for e in expr.entries if e.weight is not None]
        return self._weighted_set(ids, weights, expr, "{...}")

    def check_weight(self, weight: int | float, node: s.Node) -> float:
        """``weight`` if it is a positive finite number; else a DslError at ``node``."""
        if not math.isfinite(weight) or weight <= 0:
            hint = "to leave it out, delete it instead of giving it weight 0" if weight == 0 else None
            raise self.source.error(node, f"a weight must be positive and finite, got {format_number(weight)}", hint)
        return float(weight)

    def _call(self, call: s.SetCall) -> TokenSet:
        if call.name == "vocab":
            if call.args:
                raise self.source.error(call.args[0], "vocab() takes no arguments")
            return TokenSet(self._plain_ids)
        if call.name == "top":
            return self._top(call)
        resolver = self.resolvers.get(call.name)
        if resolver is None:
            known = ", ".join(sorted({*BUILTINS, *self.resolvers}))
            raise self.source.error(
                call,
                f"unknown function {call.name!r}; known functions: {known}",
                "token-set functions come from plugins",
            )
        args = [self._argument(a) for a in call.args]
        try:
            result = resolver(self.vocab, *args)
        except (ValueError, TypeError, LowprobError) as exc:
            raise self.source.error(call, f"{call.name}() failed: {exc}") from None
        return self._checked(result, call)

    def _argument(self, arg: s.CallArg) -> ResolverArg:
        if isinstance(arg, s.NumberArg | s.StringArg):
            return arg.value
        return self.evaluate(arg)

    def _checked(self, result: object, call: s.SetCall) -> TokenSet:
        if not isinstance(result, TokenSet):
            raise self.source.error(call, f"{call.name}() returned {type(result).__name__}, not a TokenSet")
        ids = result.ids
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab.size):
            raise self.source.error(
                call,
                f"{call.name}() returned token ids outside the vocabulary (ids 0..{self.vocab.size - 1})",
            )
        return result  # TokenSet validates its own weights when it is built

    def _top(self, call: s.SetCall) -> TokenSet:
        usage = 'top takes a count and a token set, as in top(64, freq("stdlib"))'
        if len(call.args) != 2 or isinstance(call.args[1], s.NumberArg | s.StringArg):
            raise self.source.error(
                call,
                f"top() needs 2 arguments, a count and a token set; got {len(call.args)}",
                usage,
            )
        count, expr = call.args
        if not isinstance(count, s.NumberArg) or not isinstance(count.value, int) or count.value < 1:
            shown = format_number(count.value) if isinstance(count, s.NumberArg) else "a set"
            raise self.source.error(count, f"top() needs a count of at least 1, got {shown}", usage)
        base = self.evaluate(expr)
        if base.weights is None:
            return TokenSet(base.ids[: count.value])
        # heaviest first; a stable sort over ascending ids breaks ties towards the lower id
        order = torch.sort(base.weights, descending=True, stable=True).indices[: count.value]
        keep = torch.zeros(len(base), dtype=torch.bool)
        keep[order] = True
        return _subset(base, keep)


def _subset(tokens: TokenSet, keep: torch.Tensor) -> TokenSet:
    """The ids of ``tokens`` where ``keep`` is true, with their weights."""
    return TokenSet(tokens.ids[keep], None if tokens.weights is None else tokens.weights[keep])
