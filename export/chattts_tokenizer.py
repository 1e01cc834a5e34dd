"""ChatTTS tokenizer files for a pack: the real one (from an asset folder) or a tiny own vocab.

The real tokenizer is bert-base-chinese's WordPiece (21,128 ids) plus ChatTTS' added tokens
(ids 21128-21177). A tiny pack must work on a fresh clone with no ChatTTS assets, so it
builds a WordPiece vocabulary of its own with the same normaliser, pre-tokeniser and added
tokens: ASCII, full-width punctuation and the whole CJK Unified Ideographs block, so any
en/zh text tokenises without [UNK]. Its ids differ from the real ones; the manifest names
every special id, so nothing downstream hard-codes them.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

TOKENIZER_FILE = "tokenizer.json"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# ChatTTS' added tokens in upstream's order (tokenizer_config.json of the v0.2 assets).
CHATTTS_TOKENS = (
    "[Sasr]", "[Pasr]", "[Easr]", "[Stts]", "[Ptts]", "[Etts]", "[Sbreak]", "[Pbreak]",
    "[Ebreak]", "[uv_break]", "[v_break]", "[lbreak]", "[llbreak]", "[undefine]", "[laugh]",
    "[spk_emb]", "[empty_spk]", "[music]", "[pure]",
    *(f"[break_{i}]" for i in range(8)),
    *(f"[laugh_{i}]" for i in range(3)),
    *(f"[oral_{i}]" for i in range(10)),
    *(f"[speed_{i}]" for i in range(10)),
)

FULLWIDTH_PUNCTUATION = (
    "，。、！？：；“”‘’（）《》【】「」『』－～…—·"  # what the zh normaliser produces
    "＃＄％＆＊＋／＜＝＞＠＼＾｀｛｜｝"
)
CJK_FIRST, CJK_LAST = 0x4E00, 0x9FFF


def tiny_vocab() -> list[str]:
    """Deterministic tiny WordPiece vocabulary (order defines ids)."""
    vocab = list(BERT_SPECIALS)
    vocab += list(string.digits + string.ascii_lowercase + string.punctuation)
    vocab += [f"##{c}" for c in string.digits + string.ascii_lowercase]
    vocab += list(FULLWIDTH_PUNCTUATION)
    vocab += [chr(c) for c in range(CJK_FIRST, CJK_LAST + 1)]
    seen: set[str] = set()
    return [t for t in vocab if not (t in seen or seen.add(t))]


def build_tiny_tokenizer() -> Tokenizer:
    """BERT-style WordPiece with ChatTTS' added tokens, configured like the real file."""
    vocab = {token: i for i, token in enumerate(tiny_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in (*BERT_SPECIALS, *CHATTTS_TOKENS)]
    )
    return tok


def load_asset_tokenizer(folder: Path) -> Tokenizer:
    """The asset folder's tokenizer.json with its fixed 256 padding/truncation switched off
    (upstream calls it with `padding=True` on one text at a time, i.e. neither applies)."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"ChatTTS tokenizer not found: {path}")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """Every added token's id by name; fails if a ChatTTS token is missing."""
    ids: dict[str, int] = {}
    for name in (*BERT_SPECIALS, *CHATTTS_TOKENS):
        token_id = tok.token_to_id(name)
        if token_id is None:
            raise ValueError(f"tokenizer lacks the ChatTTS token {name}")
        ids[name] = token_id
    return ids


def write_tokenizer(tok: Tokenizer, out: Path) -> None:
    """tokenizer.json plus the two small files `BertTokenizerFast.from_pretrained` wants, so
    the pack folder also serves as the package's `tokenizer_path` in reference tests."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / TOKENIZER_FILE))
    special_map = {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]", "additional_special_tokens": list(CHATTTS_TOKENS),
    }
    config = {
        "tokenizer_class": "BertTokenizerFast", "do_lower_case": True,
        "tokenize_chinese_chars": True, "strip_accents": None, "model_max_length": 1_000_000,
        **special_map,
    }
    for name, data in (("special_tokens_map.json", special_map), ("tokenizer_config.json", config)):
        (out / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                                encoding="utf-8")
