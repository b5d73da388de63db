"""A progress bar that switches itself off under CI and when stderr is not a terminal."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def progress_enabled(requested: bool | None = None) -> bool:
    """``requested`` wins when given; otherwise on only for an interactive terminal outside CI."""
    if requested is not None:
        return requested
    if os.environ.get("CI") or os.environ.get("LOWPROB_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def progress_bar(total: float | None, description: str, enabled: bool | None = None, unit: str = "call") -> Any:
    """A tqdm bar over model calls (or other ``unit``s; steps when ``total`` is None) with rate and ETA."""
    return tqdm(total=total, desc=description, unit=unit, unit_scale=True, leave=False,
                disable=not progress_enabled(enabled), dynamic_ncols=True)
