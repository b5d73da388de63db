"""Reading TOML config files (experiments, reproduce) into pydantic models with errors that name file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from lowprob.core.errors import LowprobError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def read_toml_config(path: Path | str, model: type[ConfigT], what: str) -> ConfigT:
    """Parse ``path`` as TOML and validate it as ``model``; ``what`` names the kind of file in errors."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LowprobError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise LowprobError(f"{path}: not valid TOML: {exc}") from None
    try:
        return model(**data)
    except ValidationError as exc:
        lines = [f"{path}: invalid {what}"]
        lines += [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise LowprobError("\n".join(lines)) from None
    except LowprobError as exc:  # a validator's own error, e.g. a budget that cannot work
        raise LowprobError(f"{path}: {exc}") from None
