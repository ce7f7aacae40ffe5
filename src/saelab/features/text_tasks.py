"""Binary token-level tasks computed from the text alone, for 1-d probes on LM latents.

Each task labels the token at a position (whose residual is the cached row). Tokens are read as
their decoded strings; a *word token* starts a word (leading whitespace, or the previous token
does not end in a letter) and a word is *complete* when the next token does not continue it
(a token that starts with a letter, no leading space). Windows are arbitrary cuts of the text, so
the state tasks (quotes, parentheses) count only what the window itself shows. Base rates on
the offline SmolLM2/SWORD cache are in docs/features.md; `TaskLabels.base_rates` gives them for
any data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from saelab.data.token_grid import UNKNOWN, TokenGrid
from saelab.features.data import TokenText

_WORDS = {
    "determiner": "the a an this that these those",
    "personal_pronoun": "i me my we us our you your he him his she her it its they them their",
    "preposition": "of in to for with on at by from into upon unto over under about through against before after among",
    "conjunction": "and or but nor yet so",
    "modal_verb": "shall will should would may might can could must",
    "be_verb": "is am are was were be been being",
    "negation": "not no never nor neither none nothing",
    "archaic_form": "thee thou thy thine ye hath doth art shalt wilt hast didst unto saith",
    "wh_word": "who whom whose which what when where why how",
}
_DIVINE = {"God", "Lord", "LORD", "Jesus", "Christ", "Spirit", "Yahweh"}
_VERSE_REF = re.compile(r"\b\d+:\d+(?:-\d+)?\b|\bVerse \d+\b")
_QUOTES_ASCII = '"'
_OPEN_QUOTE, _CLOSE_QUOTE = "\u201c", "\u201d"


@dataclass(frozen=True)
class TextTask:
    """A task's name and what it labels."""

    name: str
    description: str


TASKS: tuple[TextTask, ...] = (
    TextTask("digit", "the token contains a digit"),
    TextTask("verse_reference", "the token is part of a chapter:verse reference (3:16, 5:7-8) or a 'Verse 31' marker"),
    TextTask("capitalized_word", "a word token whose first letter is upper-case"),
    TextTask("all_caps", "a token of at least two letters, all upper-case (LORD)"),
    TextTask("word_start", "the token is whitespace followed by a letter (starts a word)"),
    TextTask(
        "word_continuation",
        "the token continues a word: starts with a letter, no space, after a token ending in a letter",
    ),
    TextTask("punctuation", "the token holds only punctuation (no letter, digit or only-whitespace)"),
    TextTask("sentence_end", "the token contains . ! or ?"),
    TextTask("comma", "the token contains a comma"),
    TextTask("colon_semicolon", "the token contains : or ;"),
    TextTask("newline", "the token contains a line break"),
    TextTask("line_start", "the previous token contains a line break"),
    TextTask(
        "sentence_start", "a word token after a token ending a sentence (. ! ? then closing quotes) or a line break"
    ),
    TextTask("inside_quotes", 'an odd number of " or more \u201c than \u201d before it in the window'),
    TextTask("inside_parentheses", "more ( than ) before it in the window"),
    *(TextTask(name, f"a complete word token, one of: {words}") for name, words in _WORDS.items()),
    TextTask("divine_name", "a complete word token, one of: " + " ".join(sorted(_DIVINE))),
    TextTask("repeated_token", "the same token id occurs earlier in the window"),
    TextTask("induction_bigram", "the pair (previous token, this token) occurs earlier in the window"),
    TextTask("ing_ending", "a complete word ending in 'ing' ends at this token"),
)
TASK_NAMES = tuple(t.name for t in TASKS)


@dataclass
class TaskLabels:
    """Labels [N, K] of the tasks for N rows."""

    names: tuple[str, ...]
    labels: np.ndarray  # bool [N, K]

    def base_rates(self) -> dict[str, float]:
        """Share of rows where each task holds."""
        return {n: float(v) for n, v in zip(self.names, self.labels.mean(0))} if len(self.labels) else {}


def _vocab_properties(strings: list[str]) -> dict[str, np.ndarray]:
    """Per-token-string properties (the last entry is the empty string standing for unknown tokens)."""

    def arr(fn: Callable[[str], bool]) -> np.ndarray:
        return np.fromiter((bool(fn(s)) for s in strings), dtype=bool, count=len(strings))

    props = {
        "digit": arr(lambda s: any(c.isdigit() for c in s)),
        "lead_space": arr(lambda s: s[:1].isspace()),
        "alpha_start": arr(lambda s: s[:1].isalpha()),
        "starts_word_alpha": arr(lambda s: s[:1].isspace() and s.lstrip()[:1].isalpha()),
        "ends_alpha": arr(lambda s: s[-1:].isalpha()),
        "upper_first": arr(lambda s: s.strip()[:1].isupper()),
        "all_caps": arr(lambda s: (t := s.strip()).isalpha() and len(t) >= 2 and t.isupper()),
        "punctuation": arr(lambda s: (t := s.strip()) != "" and not any(c.isalnum() for c in t)),
        "sentence_end": arr(lambda s: any(c in ".!?" for c in s)),
        "ends_sentence": arr(lambda s: s.rstrip().rstrip("\"'\u201d\u2019)").endswith((".", "!", "?"))),
        "comma": arr(lambda s: "," in s),
        "colon_semicolon": arr(lambda s: ":" in s or ";" in s),
        "newline": arr(lambda s: "\n" in s),
        "divine": arr(lambda s: s.strip() in _DIVINE),
        "ing": arr(lambda s: (t := s.strip().lower()).isalpha() and t.endswith("ing")),
    }
    lowered = [s.strip().lower() if s.strip().isalpha() else "" for s in strings]
    for name, words in _WORDS.items():
        vocab = set(words.split())
        props[name] = np.fromiter((w in vocab for w in lowered), dtype=bool, count=len(strings))
    props["ascii_quotes"] = np.array([s.count(_QUOTES_ASCII) for s in strings], dtype=np.int64)
    props["open_quotes"] = np.array([s.count(_OPEN_QUOTE) for s in strings], dtype=np.int64)
    props["close_quotes"] = np.array([s.count(_CLOSE_QUOTE) for s in strings], dtype=np.int64)
    props["paren"] = np.array([s.count("(") - s.count(")") for s in strings], dtype=np.int64)
    return props


def _shift_right(a: np.ndarray, fill) -> np.ndarray:
    """a[:, t-1] at t (the previous position's value), `fill` at t = 0."""
    out = np.empty_like(a)
    out[:, 0] = fill
    out[:, 1:] = a[:, :-1]
    return out


def _shift_left(a: np.ndarray, fill) -> np.ndarray:
    """a[:, t+1] at t (the next position's value), `fill` at the last position."""
    out = np.empty_like(a)
    out[:, -1] = fill
    out[:, :-1] = a[:, 1:]
    return out


def _seen_before(keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """bool [W, T]: keys[w, t] equals keys[w, s] for some earlier valid s (t valid too)."""
    W, T = keys.shape
    out = np.zeros((W, T), dtype=bool)
    earlier = np.tril(np.ones((T, T), dtype=bool), -1)
    for i in range(0, W, 256):  # [chunk, T, T] comparisons stay small
        k, v = keys[i : i + 256], valid[i : i + 256]
        same = (k[:, :, None] == k[:, None, :]) & v[:, None, :] & earlier
        out[i : i + 256] = same.any(2) & v
    return out


def _regex_labels(tokens: np.ndarray, strings: list[str], index: np.ndarray, pattern: re.Pattern) -> np.ndarray:
    """bool [W, T]: the token's characters overlap a match of `pattern` in the window's decoded text."""
    W, T = tokens.shape
    out = np.zeros((W, T), dtype=bool)
    for w in range(W):
        pieces = [strings[j] for j in index[w]]
        text = "".join(pieces)
        if not pattern.search(text):
            continue
        starts = np.cumsum([0] + [len(p) for p in pieces])
        for m in pattern.finditer(text):
            # token t spans [starts[t], starts[t+1]); it overlaps [m.start, m.end) when both bounds cross
            hit = (starts[:-1] < m.end()) & (starts[1:] > m.start())
            out[w] |= hit
    return out


def window_task_labels(tokens: np.ndarray, text: TokenText) -> dict[str, np.ndarray]:
    """bool [W, T] per task for windows of token ids (UNKNOWN positions are never labelled)."""
    valid = tokens != UNKNOWN
    uniq = np.unique(tokens[valid])
    strings = text(uniq.tolist()) + [""]
    index = np.where(valid, np.searchsorted(uniq, np.where(valid, tokens, uniq[0] if len(uniq) else 0)), len(uniq))
    p = {k: v[index] for k, v in _vocab_properties(strings).items()}
    prev_ends_alpha = _shift_right(p["ends_alpha"], False)
    word_initial = (p["starts_word_alpha"] | (p["alpha_start"] & ~prev_ends_alpha)) & valid
    continuation = p["alpha_start"] & ~p["lead_space"] & prev_ends_alpha
    complete = ~_shift_left(p["alpha_start"] & ~p["lead_space"], False)
    whole_word = word_initial & complete
    prev_newline = _shift_right(p["newline"], False)
    # Exclusive cumulative sums: the state before the token, from what the window shows.
    ascii_before = np.cumsum(p["ascii_quotes"], 1) - p["ascii_quotes"]
    typo_before = np.cumsum(p["open_quotes"] - p["close_quotes"], 1) - (p["open_quotes"] - p["close_quotes"])
    paren_before = np.cumsum(p["paren"], 1) - p["paren"]
    prev_tok = _shift_right(tokens, UNKNOWN)
    pair = np.where(valid & (prev_tok != UNKNOWN), prev_tok.astype(np.int64) * (1 << 32) + tokens, -1)
    labels = {
        "digit": p["digit"],
        "verse_reference": _regex_labels(tokens, strings, index, _VERSE_REF),
        "capitalized_word": word_initial & p["upper_first"],
        "all_caps": p["all_caps"],
        "word_start": p["starts_word_alpha"],
        "word_continuation": continuation,
        "punctuation": p["punctuation"],
        "sentence_end": p["sentence_end"],
        "comma": p["comma"],
        "colon_semicolon": p["colon_semicolon"],
        "newline": p["newline"],
        "line_start": prev_newline & valid,
        "sentence_start": word_initial & (_shift_right(p["ends_sentence"], False) | prev_newline),
        "inside_quotes": ((ascii_before % 2 == 1) | (typo_before > 0)) & valid,
        "inside_parentheses": (paren_before > 0) & valid,
        **{name: p[name] & whole_word for name in _WORDS},
        "divine_name": p["divine"] & whole_word,
        "repeated_token": _seen_before(tokens, valid),
        "induction_bigram": _seen_before(pair, pair >= 0),
        "ing_ending": p["ing"] & complete & valid,
    }
    return {name: labels[name] & valid for name in TASK_NAMES}


def text_task_labels(grid: TokenGrid, text: TokenText, rows: np.ndarray) -> TaskLabels:
    """Labels [len(rows), K] of every task for cached rows, computed on the windows that hold them."""
    rows = np.asarray(rows, dtype=np.int64)
    windows, where = np.unique(grid.row_window[rows], return_inverse=True)
    per_task = window_task_labels(grid.tokens[windows], text)
    pos = grid.row_position[rows]
    labels = (
        np.stack([per_task[n][where, pos] for n in TASK_NAMES], axis=1)
        if len(rows)
        else np.zeros((0, len(TASKS)), bool)
    )
    return TaskLabels(TASK_NAMES, labels)
