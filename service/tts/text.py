"""ChatTTS text front-end: normalisation, sentence splitting, prompt ids, refined-text decoding.

Reproduces the rules of upstream's `Normalizer` (ChatTTS 0.2.5 `norm.py`) and prompt
decoration (`model/speaker.py`, `model/tokenizer.py`), written from their description:
1. language = "zh" if the text has more CJK characters than English words, else "en";
2. for zh, half-width punctuation becomes full-width;
3. if anything outside [CJK, A-Za-z, "，。、,. "] remains (tags like `[uv_break]` ignored),
   a small punctuation map is applied, then homophones are replaced (when the pack ships
   the package's table), then the remaining unsupported characters are removed outside
   `[...]` tags.
Omitted: upstream's optional user-registered normalisers (none by default) and, in packs
without `homophones.json`, the homophone table (~10k zh character substitutions, data that
lives in the package). Token ids come from the pack's tokenizer.json through `tokenizers`,
unpadded (left padding is the engine's business).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from service.errors import PackError
from service.runtime.packs import ModelPack


class Language(StrEnum):
    ZH = "zh"
    EN = "en"


_CJK = re.compile(r"[\u4e00-\u9fff]")
_EN_WORD = re.compile(r"\b[A-Za-z]+\b")
_TAG = re.compile(r"\[[\w_]+\]")
_UNSUPPORTED = re.compile(r"[^\u4e00-\u9fffA-Za-z，。、,\. ]")

# Characters mapped to the few punctuation marks the model reads (upstream
# `character_simplifier`), applied only when unsupported characters are present.
_SIMPLIFY = str.maketrans({
    **dict.fromkeys("：；（）【】『』「」《》－", "，"), "！": "。",
    **dict.fromkeys(":;()><-", ","), "!": ".",
})
# zh only: half-width -> full-width (upstream `halfwidth_2_fullwidth`; '[', ']', '_' are
# left alone so tags survive).
_HALF_TO_FULL = str.maketrans({
    "!": "！", '"': "“", "'": "‘", "#": "＃", "$": "＄", "%": "％", "&": "＆", "(": "（",
    ")": "）", ",": "，", "-": "－", "*": "＊", "+": "＋", ".": "。", "/": "／", ":": "：",
    ";": "；", "<": "＜", "=": "＝", ">": "＞", "?": "？", "@": "＠", "\\": "＼", "^": "＾",
    "`": "｀", "{": "｛", "|": "｜", "}": "｝", "~": "～",
})
# transformers' `clean_up_tokenization` (BertTokenizerFast decodes with it on).
_DECODE_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                   (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                   (" 're", "'re"))
_DECORATION_TOKENS = ("[Stts]", "[spk_emb]", "[empty_spk]")


def detect_language(text: str) -> Language:
    chinese = len(_CJK.findall(text))
    return Language.ZH if chinese > len(_EN_WORD.findall(text)) else Language.EN


def _split_tags(text: str) -> tuple[list[str], list[str]]:
    """Plain segments and `[...]` tags, as upstream scans them: a '[' opens a tag that a ']'
    closes; an unclosed tag is dropped with the rest of the text."""
    texts: list[str] = []
    tags: list[str] = []
    current, tag = "", ""
    for ch in text:
        if ch == "[":
            texts.append(current)
            current, tag = "", ch
        elif tag:
            tag += ch
        else:
            current += ch
        if ch == "]":
            tags.append(tag)
            tag = ""
    if current:
        texts.append(current)
    return texts, tags


def _join_tags(texts: list[str], tags: list[str]) -> str:
    pending = list(tags)
    return "".join(t + (pending.pop(0) if pending else "") for t in texts)


def _map_outside_tags(text: str, fn: Any) -> str:
    texts, tags = _split_tags(text)
    texts = [fn(t) for t in texts]
    if tags:
        return _join_tags(texts, tags)
    return texts[0] if texts else ""


def normalize(text: str, language: Language | None = None,
              homophones: dict[int, int] | None = None) -> str:
    """Upstream `Normalizer.__call__(text, do_text_normalization=True, ...)`."""
    lang = language or detect_language(text)
    if lang is Language.ZH:
        text = text.translate(_HALF_TO_FULL)
    unsupported = bool(_UNSUPPORTED.search(_TAG.sub("", text)))
    if unsupported:
        text = text.translate(_SIMPLIFY)
    if homophones:
        text = text.translate(homophones)
    if unsupported:
        text = _map_outside_tags(text, lambda t: _UNSUPPORTED.sub("", t))
    return text


def split_sentences(text: str) -> list[str]:
    """Upstream `Chat.infer(split_text=True)`: lines if the text has newlines, else after
    each '。' and each '. '. Empty pieces are dropped (upstream keeps empty lines)."""
    pieces = text.split("\n") if "\n" in text else re.split(r"(?<=。)|(?<=\.\s)", text)
    return [p for p in pieces if p.strip()]


def load_homophones(path: Path) -> dict[int, int]:
    """The package's homophone table (`{char: replacement}`) as a `str.translate` map."""
    table = json.loads(path.read_text(encoding="utf-8"))
    return {ord(k): ord(v) for k, v in table.items()}


@dataclass(frozen=True)
class PromptBuilder:
    """Prompt strings and their ids for the code and refine passes of one pack."""

    tokenizer: Tokenizer
    code_template: str
    refine_template: str
    speaker_token: str
    no_speaker_token: str
    default_speed: str
    drop_from_id: int
    refine_eos_id: int
    homophones: dict[int, int] | None = None

    @classmethod
    def from_pack(cls, pack: ModelPack) -> PromptBuilder:
        tok = Tokenizer.from_file(str(pack.file("tokenizer")))
        homophones = None
        if "homophones" in pack.manifest.files:
            homophones = load_homophones(pack.file("homophones"))
        try:
            return cls.create(tok, pack.constants, homophones)
        except KeyError as exc:
            raise PackError(f"{pack.root}/manifest.json: constants lack {exc}") from None

    @classmethod
    def create(cls, tok: Tokenizer, constants: dict[str, Any],
               homophones: dict[int, int] | None = None) -> PromptBuilder:
        tok.no_padding()  # the real tokenizer.json pads and truncates to 256
        tok.no_truncation()
        c = constants
        return cls(tokenizer=tok, code_template=c["code_prompt_template"],
                   refine_template=c["refine_prompt_template"],
                   speaker_token=c["speaker_token"], no_speaker_token=c["no_speaker_token"],
                   default_speed=c["default_speed_token"],
                   drop_from_id=int(c["refine_drop_from_id"]),
                   refine_eos_id=int(c["refine_eos_token_id"]), homophones=homophones)

    def normalize(self, text: str, language: Language | None = None) -> str:
        return normalize(text, language, self.homophones)

    def code_prompt(self, text: str, has_speaker: bool, *, speed: str | None = None,
                    txt_smp: str = "") -> str:
        """`[Stts][spk_emb]{txt_smp}[speed_5]{text}[Ptts]` (upstream strips any decoration
        tokens the user typed, ChatTTS issue 459)."""
        for token in _DECORATION_TOKENS:
            text = text.replace(token, "")
        return self.code_template.format(
            speaker=self.speaker_token if has_speaker else self.no_speaker_token,
            txt_smp=txt_smp, speed=self.default_speed if speed is None else speed,
            text=text.strip(),
        )

    def refine_prompt(self, text: str, prompt: str = "") -> str:
        return self.refine_template.format(text=text, prompt=prompt)

    def ids(self, prompt: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(prompt, add_special_tokens=False).ids,
                          dtype=np.int64)

    def code_prompt_ids(self, text: str, has_speaker: bool, *, normalize: bool = True,
                        speed: str | None = None) -> np.ndarray:
        if normalize:
            text = self.normalize(text)
        return self.ids(self.code_prompt(text, has_speaker, speed=speed))

    def refine_prompt_ids(self, text: str, prompt: str = "", *,
                          normalize: bool = True) -> np.ndarray:
        if normalize:
            text = self.normalize(text)
        return self.ids(self.refine_prompt(text, prompt))

    def refined_text(self, tokens: np.ndarray) -> str:
        """Refine-pass output ids -> text: ids >= `[break_0]` dropped (upstream), and the
        `[Ebreak]` stop token if the caller kept it; decoded like BertTokenizerFast."""
        ids = np.asarray(tokens)
        if ids.ndim == 2:  # [N, num_vq] rows repeat the text id
            ids = ids[:, 0]
        kept = [int(i) for i in ids if i < self.drop_from_id and i != self.refine_eos_id]
        text = self.tokenizer.decode(kept, skip_special_tokens=False)
        for old, new in _DECODE_CLEANUP:
            text = text.replace(old, new)
        return text
