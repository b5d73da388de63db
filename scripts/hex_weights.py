"""Measure the hex distribution's weights: how often a tokenizer emits each hex token on uniformly random hex text.

The paper weights each hex token by its approximate long-run frequency when a uniformly random lowercase hex string
is tokenized. This script measures that frequency directly (2^20 seeded random characters, tokenized in 64 strings)
and sums it per token length, the weights that ``plugins/builtin/data/distributions/hex.lp`` writes out (a spec
cannot name per-token weights portably). It prints each length class's share and the KL divergence, in nats per
position, from the measured per-token distribution to the spec's (uniform within a class) and to a uniform one.

Run ``python scripts/hex_weights.py`` (built-in tokenizer) or ``python scripts/hex_weights.py path/tokenizer.json``.
"""

from __future__ import annotations

import argparse
import math
import random
from collections import Counter

from lowprob.core.vocabulary import Vocabulary
from lowprob.plugins.builtin.hf_vocab import builtin_vocabulary
from lowprob.plugins.tokenizer_vocabulary import TokenizerVocabulary

HEX_DIGITS = "0123456789abcdef"
STRINGS, LENGTH, SEED = 64, 16384, 0
LONGEST_CLASS = 4
"""Tokens of this many hex characters or more share one class (they are rare: about 2e-4 of the mass)."""


def hex_token_frequencies(vocab: Vocabulary) -> dict[str, float]:
    """Relative frequency of each token string when ``vocab`` tokenizes seeded uniformly random hex text."""
    rng = random.Random(SEED)
    counts: Counter[int] = Counter()
    for _ in range(STRINGS):
        counts.update(vocab.encode("".join(rng.choices(HEX_DIGITS, k=LENGTH))))
    total = sum(counts.values())
    return {vocab.token_string(i): c / total for i, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("tokenizer", nargs="?", help="a tokenizer.json (default: the built-in BPE tokenizer)")
    args = parser.parse_args()
    vocab = builtin_vocabulary() if args.tokenizer is None else TokenizerVocabulary.from_file(args.tokenizer)
    freqs = hex_token_frequencies(vocab)
    hex_tokens = [s for s in (vocab.token_string(i) for i in range(vocab.size)) if s and set(s) <= set(HEX_DIGITS)]
    classes = Counter(min(len(s), LONGEST_CLASS) for s in hex_tokens)
    share: dict[int, float] = dict.fromkeys(classes, 0.0)
    for s, q in freqs.items():
        share[min(len(s), LONGEST_CLASS)] += q
    spec = {s: share[min(len(s), LONGEST_CLASS)] / classes[min(len(s), LONGEST_CLASS)] for s in hex_tokens}
    print(f"{len(hex_tokens)} hex tokens, {len(freqs)} seen in {STRINGS * LENGTH} random hex characters")
    for k in sorted(classes):
        print(f"  length {k}{'+' if k == LONGEST_CLASS else ' '}: {classes[k]:4d} tokens, weight {share[k]:.4g}")
    print(f"KL(measured || spec)    = {sum(q * math.log(q / spec[s]) for s, q in freqs.items()):.4f} nats/position")
    print(f"KL(measured || uniform) = {sum(q * math.log(q * len(hex_tokens)) for q in freqs.values()):.4f}")


if __name__ == "__main__":
    main()
