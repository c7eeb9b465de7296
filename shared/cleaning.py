"""Text cleaning: Unicode normalisation and heuristic quality filters.

**Normalisation.** One visible character can be several code point sequences: ``"é"`` is either
U+00E9 (composed, NFC) or ``"e"`` + U+0301 COMBINING ACUTE ACCENT (decomposed, NFD). They look the
same and compare unequal, and a byte-level tokenizer sees different bytes. :func:`normalize_text`
puts text in one canonical form (NFC by default; NFKC also folds compatibility characters such as
the ligature ``"ﬁ"`` -> ``"fi"`` and full-width ``"Ａ"`` -> ``"A"``), unifies line endings and drops
control characters.

**Quality filters** (Gopher's rules, Rae et al. 2021, appendix A.1.1; as in Stanford CS336
assignment 4): :func:`quality_signals` measures a document; :func:`quality_issues` lists the rules
it breaks (empty list = keep):

=======================  ==========================================================  ==========
rule                     signal                                                      keep if
=======================  ==========================================================  ==========
too few/many words       ``n_words``                                                 50..100,000
mean word length         mean characters per word                                    3..10
symbols                  non-letter, non-digit, non-space characters / all characters <= 0.25
alphabetic words         fraction of words with at least one letter                  >= 0.8
duplicate lines          characters in lines that occur more than once / all         <= 0.2
top 2-gram               characters in the most frequent word 2-gram / all           <= 0.2
short lines              fraction of lines under 20 characters                       <= 0.9
=======================  ==========================================================  ==========

(Gopher measures the ratio of ``#`` and ``...`` to words; a general symbol ratio is easier to
explain and catches the same tables, code and markup. Thresholds are starting points to be tuned
by looking at what each rule removes.)
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

__all__ = ["normalize_text", "quality_signals", "quality_issues", "QUALITY_RULES", "NORMAL_FORMS"]

NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # category Cc except \t and \n
_SPACE = re.compile(r"\s")
_SYMBOL = re.compile(r"[^\w\s]|_")   # neither a letter, a digit nor whitespace
_LETTER = re.compile(r"[^\W\d_]")    # a letter
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
#: ``name: (signal, low, high)``: a document breaks the rule when ``signal`` is outside ``[low, high]``.
QUALITY_RULES: dict[str, tuple[str, float, float]] = {
    "too few or too many words": ("n_words", 50, 100_000),
    "mean word length": ("mean_word_length", 3.0, 10.0),
    "symbol ratio": ("symbol_ratio", 0.0, 0.25),
    "alphabetic words": ("alpha_word_fraction", 0.8, 1.0),
    "duplicate lines": ("duplicate_line_char_fraction", 0.0, 0.2),
    "repeated 2-gram": ("top_2gram_char_fraction", 0.0, 0.2),
    "short lines": ("short_line_fraction", 0.0, 0.9),
}


def normalize_text(text: str, form: str = "NFC", ascii_quotes: bool = False) -> str:
    """``text`` in Unicode normal form ``form``, with ``\\n`` line endings and no control characters.

    Args:
        text: any string.
        form: ``"NFC"`` (compose, the web's usual form), ``"NFD"``, ``"NFKC"`` or ``"NFKD"``.
        ascii_quotes: also map curly quotes ``‘ ’ “ ”`` to ``' "`` (NFKC keeps them).
    Returns:
        the normalised text: ``\\r\\n`` and ``\\r`` become ``\\n``; control characters other than
        ``\\n`` and ``\\t`` (category Cc) are removed.
    Raises:
        TypeError: if ``text`` is not a ``str``. ValueError: for an unknown ``form``.

    >>> [len(normalize_text("cafe\\u0301", f)) for f in ("NFC", "NFD")]
    [4, 5]
    >>> normalize_text("ﬁne\\r\\nＡ\\x00’", "NFKC", ascii_quotes=True)
    "fine\\nA'"
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if form not in NORMAL_FORMS:
        raise ValueError(f"form must be one of {NORMAL_FORMS}, got {form!r}")
    text = unicodedata.normalize(form, text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text)
    return text.translate(_QUOTES) if ascii_quotes else text


def quality_signals(doc: str) -> dict[str, float]:
    """The measurements :data:`QUALITY_RULES` look at, for one document.

    Returns ``{n_words, mean_word_length, symbol_ratio, alpha_word_fraction,
    duplicate_line_char_fraction, top_2gram_char_fraction, short_line_fraction}``
    (words are whitespace-separated; fractions are in ``[0, 1]``; an empty document gives zeros).

    Raises:
        TypeError: if ``doc`` is not a ``str``.
    """
    if not isinstance(doc, str):
        raise TypeError(f"doc must be a str, got {type(doc).__name__}")
    words = doc.split()
    n_nonspace = len(doc) - len(_SPACE.findall(doc))
    lines = [ln.strip() for ln in doc.splitlines() if ln.strip()]
    n_chars = max(n_nonspace, 1)
    line_counts = Counter(lines)
    dup_chars = sum(len(ln) * c for ln, c in line_counts.items() if c > 1)
    bigrams = Counter(zip(words, words[1:]))
    top = bigrams.most_common(1)
    top_chars = (len(top[0][0][0]) + len(top[0][0][1])) * top[0][1] if top and top[0][1] > 1 else 0
    return {
        "n_words": len(words),
        "mean_word_length": sum(map(len, words)) / len(words) if words else 0.0,
        "symbol_ratio": len(_SYMBOL.findall(doc)) / n_chars if n_nonspace else 0.0,
        "alpha_word_fraction": sum(bool(_LETTER.search(w)) for w in words) / len(words) if words else 0.0,
        "duplicate_line_char_fraction": dup_chars / max(sum(map(len, lines)), 1),
        "top_2gram_char_fraction": min(top_chars / n_chars, 1.0),
        "short_line_fraction": sum(len(ln) < 20 for ln in lines) / len(lines) if lines else 0.0,
    }


def quality_issues(doc: str, rules: dict[str, tuple[str, float, float]] | None = None) -> list[str]:
    """Names of the :data:`QUALITY_RULES` (or ``rules``) that ``doc`` breaks; ``[]`` means keep it.

    >>> quality_issues("Buy now!\\n" * 60)
    ['duplicate lines', 'repeated 2-gram', 'short lines']

    Raises:
        TypeError: if ``doc`` is not a ``str``. ValueError: if a rule names an unknown signal.
    """
    signals = quality_signals(doc)
    out = []
    for name, (signal, lo, hi) in (QUALITY_RULES if rules is None else rules).items():
        if signal not in signals:
            raise ValueError(f"rule {name!r} uses unknown signal {signal!r}; known: {sorted(signals)}")
        if not lo <= signals[signal] <= hi:
            out.append(name)
    return out
