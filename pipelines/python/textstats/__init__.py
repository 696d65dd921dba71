"""Small statistics of a text: words, lines, the most common words.

Pure Python, standard library only: the package whose unit tests
`pipelines/python.yaml` runs under a CPython built for WASI.
"""

from collections import Counter
import re

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def words(text):
    """The words of `text`, lower-cased, in order."""
    return [w.lower() for w in _WORD.findall(text)]


def line_count(text):
    """Lines of `text`; a last line without a newline counts."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def most_common(text, n=3):
    """The `n` most common words, ties in order of first appearance."""
    counts = Counter(words(text))
    first = {}
    for i, w in enumerate(words(text)):
        first.setdefault(w, i)
    return sorted(counts, key=lambda w: (-counts[w], first[w]))[:n]
