"""The CLAP export: pack contents, reproducibility, tokenizers, and the exported graphs
served by the app vs the PyTorch ClapModel path on the same audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from export import clap as export_clap
from export import clap_tokenizer
from service.pipelines.clap_text import PromptTokenizer
from service.runtime.packs import ModelPack, load_pack
from tests.clap_fixtures import (
    SR,
    WINDOW,
    extractor_from_pack,
    make_clip,
    reference_windows,
    wav_bytes,
)
from tests.conftest import running_app

pytest_plugins = ("tests.clap_fixtures",)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROBERTA = SHARED / "tokenizers" / "roberta-base"
LABELS = ["dog barking", "rain", "church bells", "a man speaking", "siren", "glass breaking"]
TEMPLATE = "This is a sound of {label}."


def test_manifest_holds_the_extractors_constants(clap_pack: ModelPack) -> None:
    m, c = clap_pack.manifest, clap_pack.constants
    assert (m.kind, m.demo, m.source) == ("clap", True, "tiny(seed=0)")
    # the hub's laion/clap-htsat-unfused preprocessor config, not the class defaults
    assert (c["f_min"], c["f_max"], c["truncation"], c["padding"]) == (
        50.0, 14000.0, "rand_trunc", "repeatpad")
    assert (c["mel_scale"], c["mel_norm"]) == ("slaney", "slaney")
    assert (c["sample_rate"], c["n_fft"], c["hop_length"], c["n_mels"]) == (48000, 1024, 480, 64)
    assert (c["max_length_samples"], c["frames"]) == (480_000, 1001)
    assert c["prompt_template"] == TEMPLATE
    assert c["pad_token_id"] == 1 and c["text_max_length"] == 78
    model = export_clap.tiny_model()
    assert c["logit_scale"] == pytest.approx(float(model.logit_scale_a.exp()))
    saved = json.loads(clap_pack.file("preprocessor_config").read_text())
    assert saved["frequency_min"] == 50 and saved["truncation"] == "rand_trunc"
    tok = Tokenizer.from_file(str(clap_pack.file("tokenizer")))
    assert tok.token_to_id("<pad>") == 1 and tok.get_vocab_size() == 512


def test_tiny_export_is_byte_reproducible(clap_pack: ModelPack, tmp_path: Path) -> None:
    export_clap.build_tiny(tmp_path)
    for name in ("manifest.json", "tokenizer.json", "audio.fp32.onnx", "text.fp32.onnx",
                 "logmel.onnx", "audio_waveform.fp32.onnx"):
        assert (tmp_path / name).read_bytes() == (clap_pack.root / name).read_bytes(), name


def test_parity_check_fails_loudly_on_a_wrong_graph(clap_pack: ModelPack) -> None:
    torch.manual_seed(123)
    other = export_clap.ClapModel(export_clap.tiny_config()).eval()
    tok = Tokenizer.from_file(str(clap_pack.file("tokenizer")))
    with pytest.raises(RuntimeError, match="parity failed"):
        export_clap.check_parity(other, clap_pack.root, frames=1001, mels=64, tok=tok)


def test_roberta_tokenizer_matches_transformers(tmp_path: Path) -> None:
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"real RoBERTa tokenizer files not found in {ROBERTA}")
    from transformers import RobertaTokenizer

    reference = RobertaTokenizer(vocab=str(ROBERTA / "vocab.json"),
                                 merges=str(ROBERTA / "merges.txt"))
    info = clap_tokenizer.save(
        clap_tokenizer.from_bpe_files(ROBERTA / "vocab.json", ROBERTA / "merges.txt"), tmp_path
    )
    assert (info.pad_token_id, info.bos_token_id, info.eos_token_id) == (1, 0, 2)
    ours = PromptTokenizer(tmp_path / info.file, max_length=512, pad_id=1)
    texts = ["This is a sound of dog barking.", "  spaces  and\ttabs", "naïve café 🎵 — ok",
             "This is a sound of <mask>.", "UPPER lower 12345 3.14", "word " * 700]
    expected = [reference(t, truncation=True, max_length=512)["input_ids"] for t in texts]
    assert [ids.tolist() for ids in ours.encode(texts)] == expected
    assert len(expected[-1]) == 512


# -- the served graphs vs PyTorch ------------------------------------------------------

def _torch_probs(pack: ModelPack, clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ClapFeatureExtractor + ClapModel; a long clip uses the service's documented windows."""
    from transformers import PreTrainedTokenizerFast

    model = export_clap.tiny_model()
    extractor = extractor_from_pack(pack)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(pack.file("tokenizer")), pad_token="<pad>")
    text = tok([TEMPLATE.format(label=label) for label in LABELS], padding=True,
               return_tensors="pt")
    with torch.no_grad():
        if clip.shape[0] <= WINDOW:
            features = extractor(clip, sampling_rate=SR, return_tensors="pt")["input_features"]
            out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                        input_features=features)
            logits, audio, texts = out.logits_per_audio[0], out.audio_embeds[0], out.text_embeds
        else:
            windows = [clip[s:s + WINDOW] for s in reference_windows(clip.shape[0])]
            features = extractor(windows, sampling_rate=SR, return_tensors="pt")["input_features"]
            per_window = model.get_audio_features(input_features=features).pooler_output
            audio = torch.nn.functional.normalize(per_window.mean(dim=0), dim=-1)
            texts = model.get_text_features(**text).pooler_output
            logits = texts @ audio * model.logit_scale_a.exp()
    return logits.softmax(-1).numpy(), (texts @ audio).numpy()


@pytest.mark.parametrize("seconds", [3.3, 10.0, 23.7])
def test_served_probabilities_match_pytorch(clap_models_dir: Path, clap_pack: ModelPack,
                                            seconds: float) -> None:
    clip = make_clip(seconds, seed=int(seconds * 10))
    probs, sims = _torch_probs(clap_pack, clip)
    with running_app(models_dir=clap_models_dir, models="clap") as client:
        r = client.post("/classify", files={"file": ("clip.wav", wav_bytes(clip), "audio/wav")},
                        data={"labels": LABELS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows_used"] == len(reference_windows(clip.shape[0]))
    served = {s["label"]: s for s in body["labels"]}
    np.testing.assert_allclose([served[x]["probability"] for x in LABELS], probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose([served[x]["similarity"] for x in LABELS], sims, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tokenizer_files", ["tokenizer.json", "vocab+merges"])
def test_export_from_a_checkpoint_folder(tmp_path: Path, tokenizer_files: str) -> None:
    """The `--checkpoint` path (from_pretrained) on a local folder saved by transformers:
    weights, preprocessor config and tokenizer all come from the folder."""
    from transformers import ClapFeatureExtractor, PreTrainedTokenizerFast, RobertaTokenizer

    folder, out = tmp_path / "checkpoint", tmp_path / "pack"
    text_config = dict(export_clap.TINY_TEXT)
    if tokenizer_files == "vocab+merges":
        if not (ROBERTA / "vocab.json").is_file():
            pytest.skip(f"real RoBERTa tokenizer files not found in {ROBERTA}")
        reference = RobertaTokenizer(vocab=str(ROBERTA / "vocab.json"),
                                     merges=str(ROBERTA / "merges.txt"))
        text_config["vocab_size"] = len(reference)
    else:
        reference = PreTrainedTokenizerFast(tokenizer_object=clap_tokenizer.train_tiny(512),
                                            pad_token="<pad>")
    torch.manual_seed(5)
    config = export_clap.ClapConfig(text_config=text_config, audio_config=export_clap.TINY_AUDIO,
                                    projection_dim=16, logit_scale_init_value=20.0)
    model = export_clap.ClapModel(config).eval()
    model.save_pretrained(folder)
    reference.save_pretrained(folder)
    # a preprocessor config unlike the class defaults and the hub's, to see it is read
    ClapFeatureExtractor(**{**export_clap.HUB_UNFUSED_PREPROCESSOR, "frequency_min": 30,
                            "frequency_max": 16000}).save_pretrained(folder)

    export_clap.build_from_checkpoint(str(folder), out)

    pack = load_pack(out, expected_kind="clap")
    c = pack.constants
    assert (pack.manifest.demo, pack.manifest.source) == (False, str(folder))
    assert (c["f_min"], c["f_max"]) == (30.0, 16000.0)
    assert c["logit_scale"] == pytest.approx(20.0)
    ours = PromptTokenizer(pack.file("tokenizer"), max_length=c["text_max_length"], pad_id=1)
    texts = ["This is a sound of dog barking.", "rain on a tin roof"]
    assert [ids.tolist() for ids in ours.encode(texts)] == [
        reference(t)["input_ids"] for t in texts]
