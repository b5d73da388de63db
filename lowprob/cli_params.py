"""Command-line value types that refuse bad numbers at parse time, naming the option: counts (``2^k``),
finite numbers in a range, seeds and torch devices."""

from __future__ import annotations

import math
from typing import Any

import click
import torch

from lowprob.core.random import MAX_SEED

MAX_EXPONENT = 256
"""``2^k`` counts take ``k`` up to this (a larger power is refused before it is computed)."""


def parse_count(value: str) -> int:
    """An integer written as digits or as ``b^k`` (``2^16``); anything else, a negative or fractional exponent
    included, is a :class:`click.BadParameter`."""
    text = str(value).strip()
    base, caret, exponent = text.partition("^")
    try:
        if not caret:
            return int(text)
        b, k = int(base), int(exponent)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer or 2^k") from None
    if not 0 <= k <= MAX_EXPONENT:
        raise click.BadParameter(f"{value!r}: the exponent must be an integer from 0 to {MAX_EXPONENT}")
    return int(b**k)


def _power(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


class Count(click.ParamType):
    """A whole number in ``[minimum, maximum]``, written as digits or ``2^k``."""

    name = "count"

    def __init__(self, minimum: int = 1, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            try:
                n = parse_count(value)
            except click.BadParameter as exc:
                self.fail(exc.message, param, ctx)
        if n < self.minimum or (self.maximum is not None and n > self.maximum):
            upper = f" and at most {_power(self.maximum)}" if self.maximum is not None else ""
            self.fail(f"{value!r}: must be at least {self.minimum}{upper}", param, ctx)
        return n


class Number(click.ParamType):
    """A finite float in a range (``nan`` and ``inf`` are refused, unlike click's ``FloatRange``)."""

    name = "number"

    def __init__(self, minimum: float | None = None, maximum: float | None = None, *, open_min: bool = False,
                 open_max: bool = False) -> None:
        self.minimum, self.maximum, self.open_min, self.open_max = minimum, maximum, open_min, open_max

    def _range(self) -> str:
        low = "" if self.minimum is None else f"{self.minimum:g} {'<' if self.open_min else '≤'} "
        high = "" if self.maximum is None else f" {'<' if self.open_max else '≤'} {self.maximum:g}"
        return f"{low}x{high}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a number", param, ctx)
        too_low = self.minimum is not None and (x <= self.minimum if self.open_min else x < self.minimum)
        too_high = self.maximum is not None and (x >= self.maximum if self.open_max else x > self.maximum)
        if not math.isfinite(x) or too_low or too_high:
            self.fail(f"{value!r}: must be a finite number with {self._range()}", param, ctx)
        return x


SEED = click.IntRange(0, MAX_SEED)
"""A seed: ``0 .. 2^63 - 1`` (see :data:`lowprob.core.random.MAX_SEED`)."""


def check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A torch device this machine has: ``cpu``, ``cuda``/``cuda:N`` with CUDA, ``mps`` with MPS."""
    if value is None:
        return None
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a torch device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise click.BadParameter(f"{value!r}: CUDA is not available on this machine (torch "
                                     f"{torch.__version__}); use cpu")
        if device.index is not None and device.index >= count:
            raise click.BadParameter(f"{value!r}: this machine has {count} CUDA device(s), cuda:0 .. "
                                     f"cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise click.BadParameter(f"{value!r}: MPS is not available on this machine; use cpu")
    elif device.type != "cpu":
        raise click.BadParameter(f"{value!r}: lowprob counts on cpu, cuda or mps, not {device.type}")
    return value


class FilePath(click.Path):
    """``click.Path`` that refuses a NUL character cleanly (``os.stat`` would raise ``ValueError``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if "\x00" in str(value):
            self.fail(f"{str(value)!r} is not a valid path (it contains a NUL character)", param, ctx)
        return super().convert(value, param, ctx)
