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


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars` characters (stripped; empty ones dropped) whose
    concatenation, whitespace aside, is the input."""
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    atoms = _ATOM.findall(text)
    pieces: list[str] = []
    start, length, i = 0, 0, 0
    min_len = max(1, max_chars // 3)
    while i < len(atoms):
        size = len(atoms[i])
        if length + size <= max_chars or length == 0:
            length += size
            i += 1
            continue
        at = _cut(atoms, start, i, min_len)
        pieces.append("".join(atoms[start : at + 1]))
        start, i, length = at + 1, at + 1, 0
    pieces.append("".join(atoms[start:]))
    return [p.strip() for p in pieces if p.strip()]
