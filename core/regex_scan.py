"""Regular expressions matched against many texts (a vocabulary, generated continuations) under a time limit.

Patterns are Python ``re`` patterns (that is the spec language's dialect). A pattern that backtracks
catastrophically (``(a|aa)+c``) can take longer than the universe's age on one token, so every scan runs
under a limit: on the main thread a CPU-time interval timer (``ITIMER_VIRTUAL``, so a busy machine does not
trip it) interrupts ``re``, whose matcher checks for signals; on other threads, where signals cannot be
delivered, the scan uses the ``regex`` package, which takes a (wall-clock) ``timeout`` and follows ``re``'s
semantics in its ``VERSION0`` mode.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

import regex

SCAN_SECONDS = 1.0
"""Most CPU seconds one regular expression may take to scan the vocabulary."""
SPEC_SCAN_SECONDS = 1.5
"""Most CPU seconds all the regular expressions of one spec may take together (a spec of thousands of distinct
cheap regexes is as much a hang as one that backtracks)."""
_TIMER, _SIGNAL = signal.ITIMER_VIRTUAL, signal.SIGVTALRM


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``re.compile(pattern)``; a pattern nested too deeply for ``re``'s parser is an ``re.error`` too."""
    try:
        return re.compile(pattern)
    except RecursionError:
        raise re.error("the pattern is nested too deeply", pattern, 0) from None


def search_all(pattern: re.Pattern[str], texts: Sequence[str], seconds: float = SCAN_SECONDS) -> list[bool]:
    """Whether each of ``texts`` contains a match; ``TimeoutError`` when that takes over ``seconds``."""
    if threading.current_thread() is threading.main_thread():
        return _search_with_timer(pattern, texts, seconds)
    return _search_with_timeouts(pattern, texts, seconds)


class _Expired(Exception):
    """Raised by the timer's signal handler while a scan is running."""


class _Timer:
    """A timer's handler that interrupts only while ``armed`` (no stray raise after the scan)."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            raise _Expired


def _search_with_timer(pattern: re.Pattern[str], texts: Sequence[str], seconds: float) -> list[bool]:
    timer = _Timer()
    previous = signal.signal(_SIGNAL, timer)
    outer_delay, outer_interval = signal.setitimer(_TIMER, seconds)
    start = time.process_time()
    timer.armed = True
    try:
        return [pattern.search(text) is not None for text in texts]
    except _Expired:
        raise TimeoutError(f"scanning took more than {seconds:g} s") from None
    finally:
        timer.armed = False
        signal.setitimer(_TIMER, 0)
        signal.signal(_SIGNAL, signal.SIG_DFL if previous is None else previous)
        if outer_delay > 0:  # give back a timer someone else had armed, less the time spent here
            signal.setitimer(_TIMER, max(outer_delay - (time.process_time() - start), 1e-3), outer_interval)


def _search_with_timeouts(pattern: re.Pattern[str], texts: Sequence[str], seconds: float) -> list[bool]:
    compiled = regex.compile(pattern.pattern, pattern.flags | regex.VERSION0)
    deadline = time.monotonic() + seconds
    out = []
    for text in texts:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"scanning took more than {seconds:g} s")
        out.append(compiled.search(text, timeout=left) is not None)
    return out
