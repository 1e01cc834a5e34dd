"""CLAP's text side tokenizer as one `tokenizer.json` the service loads with `tokenizers`.

Real checkpoints ship RoBERTa's byte-level BPE (`vocab.json` + `merges.txt`, or a
`tokenizer.json`); the tiny demo pack gets a small byte-level BPE trained here, offline
and deterministically, with RoBERTa's special-token layout (`<s>`=0, `<pad>`=1, `</s>`=2):
RoBERTa's position ids treat id 1 as padding, so the layout is part of the model contract.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = [BOS, PAD, EOS, UNK, MASK]

# A fixed corpus of sound words: the tiny vocabulary covers the demo prompts with short
# token sequences. Content matters only in that it is fixed (the build is reproducible).
_SOUND_WORDS = (
    "dog rooster pig cow frog cat hen insects sheep crow rain sea waves crackling fire "
    "crickets chirping birds water drops wind pouring water toilet flush thunderstorm "
    "crying baby sneezing clapping breathing coughing footsteps laughing brushing teeth "
    "snoring drinking sipping door wood knock mouse click keyboard typing creaks can "
    "opening washing machine vacuum cleaner clock alarm tick glass breaking helicopter "
    "chainsaw siren car horn engine train church bells airplane fireworks hand saw "
    "speech music singing guitar piano drum bass street children playing jackhammer "
    "air conditioner gun shot dog bark idling silence noise voice man woman talking"
)
_PROMPTS = ("This is a sound of {}.", "the sound of a {}", "a recording of {}", "{}")


@dataclass(frozen=True)
class TokenizerInfo:
    """What the manifest records about the tokenizer."""

    file: str
    pad_token_id: int
    bos_token_id: int
    eos_token_id: int
    vocab_size: int


def _attach_roberta_pipeline(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        (EOS, tok.token_to_id(EOS)), (BOS, tok.token_to_id(BOS)), True, False
    )
    return tok


def from_bpe_files(vocab_json: Path, merges_txt: Path) -> Tokenizer:
    """RoBERTa's byte-level BPE from its two files, as RobertaTokenizer builds it."""
    vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    merges = []
    for line in merges_txt.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#version"):
            continue
        left, right = line.split(" ")
        merges.append((left, right))
    bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                     end_of_word_suffix="", fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    return _attach_roberta_pipeline(tok)


def train_tiny(vocab_size: int) -> Tokenizer:
    """A byte-level BPE of `vocab_size` entries trained on the fixed corpus above."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = _SOUND_WORDS.split()
    corpus = [p.format(w) for p in _PROMPTS for w in words] + [_SOUND_WORDS]
    tok.train_from_iterator(corpus, trainer=trainer)
    return _attach_roberta_pipeline(tok)


def export_checkpoint_tokenizer(checkpoint: str) -> Tokenizer:
    """The checkpoint's own tokenizer (hub id or folder) as a `tokenizers.Tokenizer`."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        AutoTokenizer.from_pretrained(checkpoint).save_pretrained(folder)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return from_bpe_files(folder / "vocab.json", folder / "merges.txt")
        if (folder / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(folder / "tokenizer.json"))
    raise RuntimeError(f"{checkpoint}: no vocab.json/merges.txt or tokenizer.json to export")


def save(tok: Tokenizer, out: Path, name: str = "tokenizer.json") -> TokenizerInfo:
    """Write the tokenizer without padding or truncation: the service sets both itself."""
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(out / name), pretty=False)
    ids = {t: tok.token_to_id(t) for t in (BOS, PAD, EOS)}
    if ids[PAD] != 1:
        raise RuntimeError(f"{PAD} has id {ids[PAD]}; RoBERTa position ids need it at 1")
    return TokenizerInfo(
        file=name,
        pad_token_id=ids[PAD],
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        vocab_size=tok.get_vocab_size(),
    )
