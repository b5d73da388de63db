"""Built-in named distributions, usable by name anywhere a spec is accepted (``lowprob estimate hex-demo``).

Small demo specs for the default vocabulary, and the paper's 8 input distributions (docs/distributions.md) as spec
files in package data, written for any tokenizer that has the ``freq("code"|"english"|"spanish")`` tables.
"""

from __future__ import annotations

from importlib import resources

from lowprob.plugins.hookspecs import hookimpl
from lowprob.plugins.registry import Registrar

SPECS: dict[str, tuple[str, str]] = {
    "hex-demo": (
        'BOS then 16 hex tokens drawn uniformly; target: argmax is "ff"',
        """\
# BOS followed by 16 tokens drawn uniformly from the hexadecimal tokens ("0".."f", "00".."ff").
tokens hexset = /^[0-9a-f]+$/
dist main = BOS hexset * 16
target ff = argmax == "ff"
""",
    ),
    "words-demo": (
        'He/She then 12 common words weighted by English frequency; target: argmax is " screamed"',
        """\
# A pronoun, then 12 lowercase words drawn by their frequency in the Gettysburg Address.
tokens words = /^ [a-z]+$/
dist main = BOS ("He" @ 0.5 | "She" @ 0.5) weighted(words, freq("english")) * 12
target screamed = argmax == " screamed"
""",
    ),
    "stdlib-demo": (
        "24 tokens drawn by frequency in Python standard-library source; target: an exception",
        """\
# 24 tokens drawn by their unigram frequency in a few CPython standard-library modules.
tokens code = freq("stdlib")
dist main = BOS code * 24
target exception = argmax in {"ValueError", "TypeError", "KeyError"}
""",
    ),
}
"""Name -> (one-line description, spec text)."""


PAPER_DISTRIBUTIONS = ("hex", "camel", "colon", "if", "caps", "english", "spanish", "icl")
"""The paper's 8 input distributions (Wu & Hilton 2025, Table 1), shipped as ``data/distributions/<name>.lp``."""


def paper_spec(name: str) -> str:
    """The spec text of the paper distribution ``name``, read from package data."""
    return resources.files("lowprob.plugins.builtin").joinpath(f"data/distributions/{name}.lp").read_text("utf-8")


@hookimpl
def register_distributions(registrar: Registrar) -> None:
    """Register the demo specs in :data:`SPECS` and the paper's distributions (description: each file's first line)."""
    for name, (description, text) in SPECS.items():
        registrar.add_distribution(name, text, description=description)
    for name in PAPER_DISTRIBUTIONS:
        text = paper_spec(name)
        registrar.add_distribution(name, text, description=text.partition("\n")[0].removeprefix("# "))
