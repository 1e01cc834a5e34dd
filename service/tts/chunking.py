"""Long text -> pieces the model reads comfortably, for zh and en (issue 6's long text).

Design note. The text is cut into atoms that must never be split: a `[tag]`, a run of
Latin letters/digits (a word, with inner apostrophes and hyphens), whitespace, or any single
other character (a CJK character, a punctuation mark). Pieces are then filled greedily up
to `max_chars`; when the next atom would overflow, the piece is cut at its best break
point, by priority: after a sentence end (。！？!?…; '.' only before whitespace, so 3.14
stays whole), after a clause mark (，、；：,;:), at whitespace, else between atoms (zh text
with no marks: between characters, never inside a Latin word or a tag). A break is only
taken if it keeps at least a third of `max_chars`, so pieces do not shrink to a word when a
sentence ended early. A single atom longer than `max_chars` (a 200-letter "word") is its
own piece. Upstream ChatTTS only splits at '。' and '. ' (see `text.split_sentences`).
"""

from __future__ import annotations

import re
from typing import Literal

Split = Literal["long", "sentence", "clause"]
"""How a text is cut into pieces: `long` fills pieces up to `max_chars`
(`split_long_text`), `sentence` / `clause` end a piece at every sentence / clause end
(`split_at_sentences` / `split_at_clauses`)."""

_ATOM = re.compile(r"\[[\w]+\]|[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*|\s+|.", re.DOTALL)
_SENTENCE_END = set("。！？!?…")
_CLAUSE_END = set("，、；：,;:")


def _break_rank(atoms: list[str], i: int) -> int:
    """How good a cut right after atoms[i] is: 3 sentence, 2 clause, 1 space, 0 other."""
    atom = atoms[i]
    nxt = atoms[i + 1] if i + 1 < len(atoms) else " "
    if atom in _SENTENCE_END or ("\n" in atom and atom.isspace()) or (
            atom == "." and nxt.isspace()):
        return 3
    if atom in _CLAUSE_END:
        return 2
    if atom.isspace():
        return 1
    return 0


def _cut(atoms: list[str], start: int, end: int, min_len: int) -> int:
    """Index after which to cut the piece atoms[start:end] (best rank, latest position)."""
    best_rank, best_at = -1, end - 1
    length = 0
    for i in range(start, end):
        length += len(atoms[i])
        if length < min_len and i != end - 1:
            continue
        rank = _break_rank(atoms, i)
        if rank >= best_rank:
            best_rank, best_at = rank, i
    return best_at


def _piece_ranges(atoms: list[str], max_chars: int) -> list[tuple[int, int]]:
    """The greedy cut of `atoms` into pieces of at most `max_chars`: [start, stop) ranges,
    in order, covering every atom."""
    ranges: list[tuple[int, int]] = []
    start, length, i = 0, 0, 0
    min_len = max(1, max_chars // 3)
    while i < len(atoms):
        size = len(atoms[i])
        if length + size <= max_chars or length == 0:
            length += size
            i += 1
            continue
        at = _cut(atoms, start, i, min_len)
        ranges.append((start, at + 1))
        start, i, length = at + 1, at + 1, 0
    ranges.append((start, len(atoms)))
    return ranges


def _texts(atoms: list[str], ranges: list[tuple[int, int]]) -> list[str]:
    pieces = ("".join(atoms[a:b]).strip() for a, b in ranges)
    return [p for p in pieces if p]


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars` characters (stripped; empty ones dropped) whose
    concatenation, whitespace aside, is the input."""
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    atoms = _ATOM.findall(text)
    return _texts(atoms, _piece_ranges(atoms, max_chars))


def split_at_sentences(text: str, max_chars: int) -> list[str]:
    """Every sentence its own piece (one over `max_chars` cut as `split_long_text` cuts
    it): how text that arrives in fragments is spoken (`SentenceSplitter`), since it cannot
    wait to fill a piece up to `max_chars` before the first audio."""
    return split_pieces(text, max_chars, "sentence")


def split_at_clauses(text: str, max_chars: int) -> list[str]:
    """As `split_at_sentences`, and a clause mark ends a piece too (，、；： at once; an
    ASCII `,;:` only before whitespace, so 3,000 and 10:30 stay whole): earlier first
    audio, shorter pieces."""
    return split_pieces(text, max_chars, "clause")


def split_pieces(text: str, max_chars: int, split: Split) -> list[str]:
    """The pieces `split` cuts `text` into (see `Split`)."""
    if split == "long":
        return split_long_text(text, max_chars)
    splitter = SentenceSplitter(max_chars, split)
    return splitter.feed(text) + splitter.flush()


def _ends_piece(atoms: list[str], i: int, clauses: bool) -> bool:
    """Whether a piece of text arriving in fragments ends after atoms[i] (atoms[i + 1]
    known): a sentence end, or with `clauses` a clause mark (an ASCII one before
    whitespace)."""
    rank = _break_rank(atoms[i : i + 2], 0)
    return rank == 3 or (clauses and rank == 2
                         and (not atoms[i].isascii() or atoms[i + 1].isspace()))


# Text at the end of the buffer that more text could turn into a longer atom: an open
# `[tag`, or a word whose apostrophe or hyphen waits for its next letter.
_GROWING = re.compile(r"\[\w*|[A-Za-z0-9]+(?:['’\-][A-Za-z0-9]+)*['’\-]?")


class SentenceSplitter:
    """`split_pieces` for text that arrives in fragments of any size (an LLM's tokens):
    `feed` gives each piece as soon as it is complete, and the pieces are the same
    however the text was cut into fragments. `split="long"` gives nothing before `flush`
    (a long piece is only complete when the text is).

    Design note. That invariance is the point: a piece is given only once no later text
    can change it. Atoms are decided up to the first one that more text could extend (the
    last atom, an open `[tag`, a word before a dangling apostrophe); a sentence is complete
    once its end mark is decided (a '.' ends one only before whitespace, so its next
    character must have arrived); an open sentence longer than `max_chars` gives the
    pieces that `split_long_text` cuts before its last one (the greedy cut looks back only,
    so more text cannot move them)."""

    def __init__(self, max_chars: int, split: Split = "sentence") -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        self.max_chars = max_chars
        self.split = split
        self._text = ""
        """Text not yet given out as pieces."""

    @property
    def pending(self) -> str:
        return self._text

    def feed(self, fragment: str) -> list[str]:
        self._text += fragment
        if self.split == "long":
            return []
        clauses = self.split == "clause"
        atoms = _ATOM.findall(self._text)
        decided = self._decided(atoms)
        pieces: list[str] = []
        start = 0
        for i in range(decided):
            if i + 1 < len(atoms) and _ends_piece(atoms, i, clauses):
                pieces += _texts(atoms, [(start + a, start + b) for a, b in
                                         _piece_ranges(atoms[start : i + 1], self.max_chars)])
                start = i + 1
        ranges = _piece_ranges(atoms[start:decided], self.max_chars)
        if len(ranges) > 1:  # all but the open last piece are final
            pieces += _texts(atoms, [(start + a, start + b) for a, b in ranges[:-1]])
            start += ranges[-1][0]
        self._text = "".join(atoms[start:])
        return pieces

    def flush(self) -> list[str]:
        """The rest, as the end of the text (`input.done`)."""
        rest, self._text = self._text, ""
        return split_long_text(rest, self.max_chars)

    @staticmethod
    def _decided(atoms: list[str]) -> int:
        """How many leading atoms no later text can change."""
        for i in range(len(atoms)):
            if i == len(atoms) - 1 or _GROWING.fullmatch("".join(atoms[i:])):
                return i
        return len(atoms)
