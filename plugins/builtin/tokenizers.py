"""The built-in default vocabulary: a fixed, readable token list for the random demo models.

Single characters make any ASCII text encodable; hex pairs, English words, Python identifiers and a
few punctuation pairs give realistic specs (``/^[0-9a-f]+$/``, ``" screamed"``, ``"ValueError"``)
something to match. The list is deterministic, so token ids never change between runs.
"""

from __future__ import annotations

from functools import cache

from lowprob.core.vocabulary import ListVocabulary

BOS = "<|BOS|>"
EOS = "<|EOS|>"

WORDS = ("the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
         "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had",
         "by", "not", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
         "there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do",
         "their", "time", "if", "will", "way", "about", "many", "then", "them", "would", "write",
         "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look",
         "more", "day", "could", "go", "come", "did", "my", "sound", "no", "most", "number", "who",
         "over", "know", "water", "than", "call", "first", "people", "may", "down", "side", "been",
         "now", "find", "any", "new", "work", "part", "take", "get", "place", "made", "live",
         "where", "after", "back", "little", "only", "round", "man", "year", "came", "show",
         "every", "good", "me", "give", "our", "under", "name", "very", "through", "just", "form",
         "great", "think", "say", "help", "low", "line", "before", "turn", "cause", "same", "mean",
         "differ", "move", "right", "boy", "old", "too", "does", "tell", "sentence", "set", "three",
         "want", "air", "well", "also", "play", "small", "end", "put", "home", "read", "hand",
         "port", "large", "spell", "add", "even", "land", "here", "must", "big", "high", "such",
         "follow", "act", "why", "ask", "men", "change", "went", "light", "kind", "off", "need",
         "house", "picture", "try", "us", "again", "animal", "point", "mother", "world", "near",
         "build", "self", "earth", "father")
"""Common English words; each becomes a token with a leading space and a capitalised one without."""

SHOUTED = ("HELLO", "NO", "STOP", "YES", "HELP", "WARNING", "ERROR", "OK", "NOT", "NEVER",
           "DANGER", "FIRE")
KEYWORDS = ("False", "None", "True", "and", "as", "assert", "async", "await", "break", "class",
            "continue", "def", "del", "elif", "else", "except", "finally", "for", "from", "global",
            "if", "import", "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise",
            "return", "try", "while", "with", "yield")
"""Python's keywords, written out so the vocabulary does not change with the Python version."""
IDENTIFIERS = ("ValueError", "TypeError", "KeyError", "IndexError", "RuntimeError", "Exception",
               "HttpRequest", "HttpResponse", "DataFrame", "TestCase", "self", "print", "len",
               "range", "str", "int", "dict", "list")
PUNCTUATION = (' "', ": ", "==", "->", "!=", "<=", ">=", "()", "[]", "{}", ", ", ". ", "  ", "    ")
EXTRA = (" screamed", " said", " shouted", " whispered")


def _token_strings() -> list[str]:
    """Every token in id order; later duplicates of an earlier token are dropped (first id wins)."""
    printable = [chr(c) for c in range(32, 127)]
    hex_pairs = [f"{i:02x}" for i in range(256)]
    spaced = [f" {w}" for w in WORDS]
    capitalised = [w.capitalize() for w in WORDS]
    groups = ([BOS, EOS], printable, ["\n", "\t"], hex_pairs, spaced, capitalised, SHOUTED,
              KEYWORDS, IDENTIFIERS, PUNCTUATION, EXTRA)
    return list(dict.fromkeys(tok for group in groups for tok in group))


@cache
def default_vocabulary() -> ListVocabulary:
    """The default vocabulary (id 0 is BOS, id 1 EOS); the same object on every call."""
    return ListVocabulary(_token_strings(), special={"BOS": 0, "EOS": 1})
