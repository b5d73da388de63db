"""Reading TOML config files (experiments, reproduce) into pydantic models with errors that name file and key."""

from __future__ import annotations

import tomllib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from lowprob.core.errors import LowprobError
from lowprob.core.validation_messages import format_validation_error

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys (config files and result rows: a typo is an error)."""

    model_config = ConfigDict(extra="forbid")


def read_toml_config(path: Path | str, model: type[ConfigT], what: str) -> ConfigT:
    """Parse ``path`` as TOML and validate it as ``model``; ``what`` names the kind of file in errors."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LowprobError(f"{what} {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise LowprobError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LowprobError(f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8") from None
    except OSError as exc:  # a folder, no permission, ...
        raise LowprobError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return model(**data)
    except ValidationError as exc:
        lines = [f"{path}: invalid {what}", *(f"  {line}" for line in format_validation_error(exc, model))]
        raise LowprobError("\n".join(lines)) from None
    except LowprobError as exc:  # a validator's own error, e.g. a budget that cannot work
        raise LowprobError(f"{path}: {exc}") from None


def reject_duplicates(path: Path, what: str, values: Sequence[Hashable]) -> None:
    """Refuse a list that names one entry twice (it would plan the same rows twice); the error names it."""
    seen: set[Hashable] = set()
    for value in values:
        if value in seen:
            raise LowprobError(f"{path}: {what} lists {value!r} twice; each entry must be distinct")
        seen.add(value)
