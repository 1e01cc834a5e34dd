"""The tiny ChatTTS pack's graphs against the package's own PyTorch modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.runtime.packs import ModelPack
from tests.chattts_fixtures import shared_tokenizer_dir, tiny_modules

pytest.importorskip("ChatTTS", reason="chattts not installed (export/install_chattts.sh)")

from export import chattts_parity as parity
from export.chattts_tokenizer import (
    CHATTTS_TOKENS,
    build_tiny_tokenizer,
    load_asset_tokenizer,
)

pytest_plugins = ("tests.chattts_fixtures",)

GRAPHS = ("embed_text", "embed_code", "gpt", "head_text", "decoder", "dvae_decode", "vocos")
TOL = 1e-4


def session(pack: ModelPack, name: str) -> ort.InferenceSession:
    path, _ = pack.graph(name, "fp32")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_manifest_names_graphs_files_and_tokens(chattts_pack: ModelPack) -> None:
    c = chattts_pack.constants
    assert chattts_pack.manifest.demo is True
    assert set(chattts_pack.manifest.graphs) == set(GRAPHS)
    tok = build_tiny_tokenizer()
    assert c["text_vocab_size"] == tok.get_vocab_size()
    for name in CHATTTS_TOKENS:
        assert c["special_tokens"][name] == tok.token_to_id(name)
    assert c["refine_drop_from_id"] == tok.token_to_id("[break_0]")
    assert c["audio_eos"] == c["num_audio_tokens"] - 1 == 625
    stat = np.load(chattts_pack.file("spk_stat"))
    assert stat.dtype == np.float16 and stat.shape == (2 * c["spk_emb_dim"],)
    for name in GRAPHS:
        _, variant = chattts_pack.graph(name, "fp32")
        graph = session(chattts_pack, name)
        assert [i.name for i in graph.get_inputs()] == variant.inputs
        assert [o.name for o in graph.get_outputs()] == variant.outputs


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_matches_package_modules(chattts_pack: ModelPack, name: str) -> None:
    m = tiny_modules()
    spk_id = chattts_pack.constants["special_tokens"]["[spk_emb]"]
    feeds = parity.random_feeds(m, spk_id, seed=7)[name]
    expected = parity.references(m, spk_id)[name](feeds)
    assert parity.max_abs_diff(session(chattts_pack, name), feeds, expected) <= TOL


@pytest.mark.parametrize(("batch", "new", "past"), [(1, 1, 0), (3, 1, 7), (1, 6, 0), (4, 2, 5)])
def test_gpt_graph_over_shapes(chattts_pack: ModelPack, batch: int, new: int, past: int) -> None:
    """Traced graphs fix Python branches: check shapes other than the export example."""
    m = tiny_modules()
    s = m.sizes
    rng = np.random.default_rng(batch * 100 + new * 10 + past)
    mask = np.ones((batch, past + new), dtype=np.int64)
    if batch > 1 and past > 1:
        mask[1, :2] = 0  # left padding in the past only: no fully masked query
    feeds = {
        "inputs_embeds": rng.normal(size=(batch, new, s.hidden_size)).astype(np.float32),
        "attention_mask": mask,
        "position_ids": np.where(mask == 0, 1, mask.cumsum(1) - 1)[:, past:].astype(np.int64),
    }
    for i in range(s.num_layers):
        for kv in ("key", "value"):
            shape = (batch, s.num_heads, past, s.head_dim)
            feeds[f"past_{kv}_{i}"] = rng.normal(size=shape).astype(np.float32)
    got = parity.max_abs_diff(session(chattts_pack, "gpt"), feeds, parity.ref_gpt(m, feeds))
    assert got <= TOL


def _gpt_step(graph: ort.InferenceSession, embeds: np.ndarray, mask: np.ndarray,
              past: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    new = embeds.shape[1]
    positions = (np.where(mask == 0, 1, mask.cumsum(1) - 1)[:, -new:]).astype(np.int64)
    feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **past}
    names = [o.name for o in graph.get_outputs()]
    return dict(zip(names, graph.run(None, feeds), strict=True))


def test_prefill_then_decode_equals_full_forward(chattts_pack: ModelPack) -> None:
    """Prefill a left-padded batch, then 3 greedy decode steps through embed_code + gpt with
    the returned cache; each step's logits and the final cache equal ONE forward of the
    package's LlamaModel over the whole sequence (and its weight-normed heads)."""
    m = tiny_modules()
    s = m.sizes
    gpt, embed_code = session(chattts_pack, "gpt"), session(chattts_pack, "embed_code")
    rng = np.random.default_rng(3)
    prompt = rng.normal(size=(2, 6, s.hidden_size)).astype(np.float32)
    mask = np.ones((2, 6), dtype=np.int64)
    mask[1, :2] = 0
    empty = np.zeros((2, s.num_heads, 0, s.head_dim), dtype=np.float32)
    past = {f"past_{kv}_{i}": empty for i in range(s.num_layers) for kv in ("key", "value")}
    embeds, step_logits = prompt, []
    for _ in range(4):  # prefill + 3 decode steps
        out = _gpt_step(gpt, embeds, mask, past)
        step_logits.append(out["code_logits"])
        past = {k.replace("present", "past"): v for k, v in out.items() if k.startswith("present")}
        codes = out["code_logits"].argmax(-1)[:, None, :].astype(np.int64)  # [B, 1, 4]
        embeds = embed_code.run(None, {"codes": codes})[0]
        mask = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
    mask = mask[:, :-1]  # the last sampled codes were never fed
    full = np.concatenate([prompt, *[embed_code.run(None, {"codes": c})[0] for c in (
        lg.argmax(-1)[:, None, :].astype(np.int64) for lg in step_logits[:-1])]], axis=1)
    with torch.no_grad():
        ref = m.gpt.gpt(
            inputs_embeds=torch.from_numpy(full),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(np.where(mask == 0, 1, mask.cumsum(1) - 1)),
            use_cache=True,
        )
        hidden = ref.last_hidden_state
        for step, logits in enumerate(step_logits):
            position = 6 + step - 1
            heads = torch.stack([h(hidden[:, position]) for h in m.embed.head_code], dim=1)
            np.testing.assert_allclose(logits, heads.numpy(), atol=TOL, rtol=0)
    valid = mask.astype(bool)
    for i, layer in enumerate(ref.past_key_values.layers):
        for kv, tensor in (("key", layer.keys), ("value", layer.values)):
            got, want = past[f"past_{kv}_{i}"], tensor.numpy()
            assert got.shape == want.shape
            for row in range(2):  # padded positions are unspecified past layer 0
                np.testing.assert_allclose(got[row][:, valid[row]], want[row][:, valid[row]],
                                           atol=TOL, rtol=0)


@pytest.mark.parametrize("frames", [2, 7, 40])
def test_vocos_graph_equals_torch_istft(chattts_pack: ModelPack, frames: int) -> None:
    m = tiny_modules()
    mel = np.random.default_rng(frames).normal(size=(2, 100, frames)).astype(np.float32)
    got = session(chattts_pack, "vocos").run(None, {"mel": mel})[0]
    with torch.no_grad():
        want = m.vocos.decode(torch.from_numpy(mel)).numpy()
    assert got.shape == want.shape == (2, 256 * (frames - 1))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_assets_layout_round_trip(tmp_path: Path, chattts_pack: ModelPack) -> None:
    """`--assets` reads the official layout: tiny modules saved that way give the same pack
    graphs' outputs as the tiny pack itself."""
    from export.chattts import build_from_assets
    from export.chattts_modules import save_assets
    from export.chattts_tokenizer import write_tokenizer

    m = tiny_modules()
    asset = save_assets(m, tmp_path / "ChatTTS")
    write_tokenizer(build_tiny_tokenizer(), asset / "tokenizer")
    build_from_assets(tmp_path / "ChatTTS", tmp_path / "pack", sizes=m.sizes)
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    assert manifest["demo"] is False and manifest["constants"]["tokenizer_source"] == "chattts"
    spk_id = chattts_pack.constants["special_tokens"]["[spk_emb]"]
    feeds = parity.random_feeds(m, spk_id, seed=11)
    for name in ("gpt", "decoder", "vocos"):
        a = session(chattts_pack, name).run(None, feeds[name])
        path = tmp_path / "pack" / manifest["graphs"][name]["fp32"]["file"]
        b = ort.InferenceSession(str(path)).run(None, feeds[name])
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_real_tokenizer_loads_without_padding(tmp_path: Path) -> None:
    """The asset tokenizer.json pads/truncates to 256; the pack's copy must not."""
    from ChatTTS.model import Tokenizer

    real = shared_tokenizer_dir()
    tok = load_asset_tokenizer(real)
    text = "[Stts][spk_emb][speed_5]你好，ChatTTS 世界。" * 30 + "[Ptts]"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > 256
    upstream = Tokenizer(str(real))
    want = upstream._tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == want


def test_graphs_reproduce_package_pipeline_teacher_forced(chattts_pack: ModelPack,
                                                          chattts_pack_dir: Path) -> None:
    """Upstream's code pass (`Chat._infer_code`, seeded speaker string, its own sampling) and
    audio decode, replayed through the pack with the service's prompt and speaker code:
    same hidden state at every step and the same waveform."""
    from ChatTTS import Chat

    from service.tts.speaker import decode_spk_emb
    from service.tts.text import PromptBuilder
    from tests.chattts_fixtures import reference_chat

    chat = reference_chat(chattts_pack_dir)
    torch.manual_seed(5)
    spk_string = chat.sample_random_speaker()
    text = "你好，世界。Hello world."
    params = Chat.InferCodeParams(spk_emb=spk_string, max_new_token=10, manual_seed=3,
                                  show_tqdm=False)
    result = next(chat._infer_code([text], False, torch.device("cpu"), True, params))
    codes = result.ids[0].numpy()
    want_hidden = result.hiddens[0].numpy().copy()
    want_wave = chat._decode_to_wavs([result.hiddens[0].clone()], True)[0]

    c = chattts_pack.constants
    ids = PromptBuilder.from_pack(chattts_pack).code_prompt_ids(text, True, normalize=False)
    spk = decode_spk_emb(spk_string, c["spk_emb_dim"])
    embeds = session(chattts_pack, "embed_text").run(None, {"input_ids": ids[None],
                                                            "spk_emb": spk[None]})[0]
    gpt, embed_code = session(chattts_pack, "gpt"), session(chattts_pack, "embed_code")
    empty = np.zeros((1, c["num_heads"], 0, c["head_dim"]), dtype=np.float32)
    past = {f"past_{kv}_{i}": empty for i in range(c["num_layers"]) for kv in ("key", "value")}
    mask = np.ones((1, len(ids)), dtype=np.int64)
    hidden = []
    for step in range(len(codes)):
        out = _gpt_step(gpt, embeds, mask, past)
        hidden.append(out["hidden"][0, -1])
        past = {k.replace("present", "past"): v for k, v in out.items() if k.startswith("present")}
        embeds = embed_code.run(None, {"codes": codes[None, step : step + 1]})[0]
        mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
    np.testing.assert_allclose(np.stack(hidden), want_hidden, atol=TOL, rtol=0)
    mel = session(chattts_pack, "decoder").run(None, {"hidden": np.stack(hidden)[None]})[0]
    wave = session(chattts_pack, "vocos").run(None, {"mel": mel})[0][0]
    assert wave.shape == want_wave.shape == (256 * (2 * len(codes) - 1),)
    np.testing.assert_allclose(wave, want_wave, atol=TOL, rtol=0)


slow = pytest.mark.skipif(not os.environ.get("AUDIOSERVE_SLOW_TESTS"),
                          reason="slow: set AUDIOSERVE_SLOW_TESTS=1")


@pytest.mark.slow
@slow
def test_dynamo_exporter_gives_the_same_gpt(tmp_path: Path, chattts_pack: ModelPack) -> None:
    from export.chattts import export_graph, graph_specs

    m = tiny_modules()
    spk_id = chattts_pack.constants["special_tokens"]["[spk_emb]"]
    spec = graph_specs(m, spk_id)["gpt"]
    export_graph("gpt", spec, parity.random_feeds(m, spk_id, seed=1)["gpt"],
                 tmp_path / "gpt.onnx", exporter="dynamo")
    feeds = parity.random_feeds(m, spk_id, seed=5)["gpt"]
    graph = ort.InferenceSession(str(tmp_path / "gpt.onnx"))
    assert parity.max_abs_diff(graph, feeds, parity.ref_gpt(m, feeds)) <= TOL


@pytest.mark.slow
@slow
def test_random_real_pack_exports_with_parity(tmp_path: Path) -> None:
    """Real sizes (GPT 20 x 768, 1 GB of graphs, ~2 min); parity is enforced inside."""
    from export.chattts import build_random_real

    build_random_real(tmp_path / "chattts")
    manifest = json.loads((tmp_path / "chattts" / "manifest.json").read_text())
    c = manifest["constants"]
    assert (c["hidden_size"], c["num_layers"], c["num_heads"]) == (768, 20, 12)
    assert max(manifest["parity"]["max_abs_diff"].values()) <= TOL
