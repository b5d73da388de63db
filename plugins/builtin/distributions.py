"""Built-in named distributions: small spec texts for the default vocabulary, usable by name
anywhere a spec is accepted (``lowprob estimate hex-demo``)."""

from __future__ import annotations

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


@hookimpl
def register_distributions(registrar: Registrar) -> None:
    """Register the demo specs in :data:`SPECS`."""
    for name, (description, text) in SPECS.items():
        registrar.add_distribution(name, text, description=description)
