"""CLAP's text side outside the graph: label checks, prompt tokenising, the LRU cache.

Zero-shot requests repeat the same label sets, so a prompt's embedding is computed once
and then served from the cache; labels never change the audio side.
"""

from __future__ import annotations

import string
from collections import OrderedDict
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from service.errors import InvalidInput
from service.settings import Settings


class PromptTokenizer:
    """Prompt -> int64 token ids (with `<s>`/`</s>`), truncated to the text graph's limit."""

    def __init__(self, path: Path, *, max_length: int, pad_id: int) -> None:
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = pad_id

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(texts)]


def pad_batch(items: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id rows to the longest: (input_ids, attention_mask), both int64 [B,T]."""
    width = max(len(ids) for ids in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for row, item in enumerate(items):
        ids[row, : len(item)] = item
        mask[row, : len(item)] = 1
    return ids, mask


class EmbeddingCache:
    """A bounded LRU map prompt -> embedding (read-only float32 vectors), each with the
    replicas that computed it (what a cached answer's `X-Audioserve-Replica` names)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._origin: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> np.ndarray | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def origin(self, key: str) -> tuple[str, ...]:
        return self._origin.get(key, ())

    def put(self, key: str, value: np.ndarray, origin: tuple[str, ...] = ()) -> None:
        value = np.array(value, dtype=np.float32)
        value.setflags(write=False)
        self._data[key] = value
        self._origin[key] = origin
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            old, _ = self._data.popitem(last=False)
            self._origin.pop(old, None)


def validate_labels(labels: list[str], settings: Settings) -> list[str]:
    """Stripped labels, or InvalidInput saying what is wrong with them."""
    if not labels:
        raise InvalidInput("no labels: send at least one label (`labels`)")
    if len(labels) > settings.max_labels:
        raise InvalidInput(
            f"{len(labels)} labels; the limit is {settings.max_labels} (AUDIOSERVE_MAX_LABELS)"
        )
    cleaned = [label.strip() for label in labels]
    for i, label in enumerate(cleaned):
        if not label:
            raise InvalidInput(f"label {i} is empty; every label needs some text")
        if len(label) > settings.max_label_chars:
            raise InvalidInput(
                f"label {i} has {len(label)} characters; the limit is "
                f"{settings.max_label_chars} (AUDIOSERVE_MAX_LABEL_CHARS)"
            )
    duplicates = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if duplicates:
        raise InvalidInput(f"duplicate labels: {duplicates}; each label must appear once")
    return cleaned


def validate_template(template: str, max_chars: int) -> str:
    """A prompt template holds `{label}` exactly once, with no conversion or format spec
    (`{label:>2000000}` made each prompt 2 MB), and literal braces doubled; anything
    else is refused rather than formatted into something the client did not mean
    (`{{label}}` is the literal text "{label}": every prompt the same, uniform scores)."""
    if len(template) > max_chars:
        raise InvalidInput(f"prompt_template has {len(template)} characters; the limit is "
                           f"{max_chars} (AUDIOSERVE_MAX_TEMPLATE_CHARS)")
    example = "e.g. 'This is a sound of {label}.'"
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion
                  in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InvalidInput(f"prompt_template {template!r} is not a valid template ({exc}); "
                           f"write `{{{{` and `}}}}` for literal braces, {example}") from None
    if not fields:
        raise InvalidInput(f"prompt_template {template!r} has no `{{label}}` placeholder, "
                           f"{example}")
    if [name for name, _, _ in fields] != ["label"]:
        shown = ", ".join("{" + name + "}" for name, _, _ in fields)
        raise InvalidInput(f"prompt_template {template!r} is not a valid template: it must "
                           f"hold `{{label}}` exactly once and no other field (it has "
                           f"{shown}); write `{{{{` for a literal brace")
    _, spec, conversion = fields[0]
    if spec or conversion:
        raise InvalidInput(f"prompt_template {template!r} is not a valid template: "
                           "`{label}` takes no conversion or format spec")
    return template
