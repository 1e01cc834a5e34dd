"""Reference outputs for every ChatTTS pack graph, computed by the package's own modules.

Kept apart from the export wrappers on purpose: these go through upstream's public paths
(`Embed.forward` with a text mask, `Speaker.apply`, the weight-normed heads, `DVAE.forward`,
`Vocos.decode`), so a mistake in a wrapper's glue shows up as a parity failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from ChatTTS.model import Speaker
from transformers.cache_utils import DynamicCache

from export.chattts_modules import NUM_VQ, ChatTTSModules, spk_stat_string

Arrays = dict[str, np.ndarray]


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


@torch.no_grad()
def ref_embed_text(m: ChatTTSModules, spk_emb_id: int, feeds: Arrays) -> Arrays:
    ids = _t(feeds["input_ids"])
    rows = []
    for row in range(ids.shape[0]):
        row_ids = ids[row : row + 1].unsqueeze(-1).expand(-1, -1, NUM_VQ)
        emb = m.embed(row_ids, torch.ones(row_ids.shape[:2], dtype=torch.bool)).clone()
        spk = _t(feeds["spk_emb"][row]).half()  # upstream decodes speakers to float16
        if bool((row_ids[..., 0] == spk_emb_id).any()):
            speaker = Speaker(m.sizes.hidden_size, spk_stat_string(m.spk_stat))
            emb = speaker.apply(emb, spk, row_ids, spk_emb_id, torch.device("cpu"), inplace=False)
        rows.append(emb)
    return {"inputs_embeds": torch.cat(rows).numpy()}


@torch.no_grad()
def ref_embed_code(m: ChatTTSModules, feeds: Arrays) -> Arrays:
    codes = _t(feeds["codes"])
    emb = m.embed(codes, torch.zeros(codes.shape[:2], dtype=torch.bool))
    return {"inputs_embeds": emb.numpy()}


@torch.no_grad()
def ref_gpt(m: ChatTTSModules, feeds: Arrays) -> Arrays:
    """LlamaModel forward with a DynamicCache, code logits from the weight-normed heads."""
    layers = m.sizes.num_layers
    pairs = [(_t(feeds[f"past_key_{i}"]), _t(feeds[f"past_value_{i}"])) for i in range(layers)]
    cache = DynamicCache(ddp_cache_data=pairs)
    past_len = pairs[0][0].shape[2]
    embeds = _t(feeds["inputs_embeds"])
    out = m.gpt.gpt(
        inputs_embeds=embeds,
        attention_mask=_t(feeds["attention_mask"]),
        position_ids=_t(feeds["position_ids"]),
        past_key_values=cache,
        use_cache=True,
        cache_position=torch.arange(past_len, past_len + embeds.shape[1]),
    )
    hidden = out.last_hidden_state
    logits = torch.stack([head(hidden[:, -1]) for head in m.embed.head_code], dim=1)
    result = {"hidden": hidden.numpy(), "code_logits": logits.numpy()}
    for i, layer in enumerate(out.past_key_values.layers):
        result[f"present_key_{i}"] = layer.keys.numpy()
        result[f"present_value_{i}"] = layer.values.numpy()
    return result


@torch.no_grad()
def ref_head_text(m: ChatTTSModules, feeds: Arrays) -> Arrays:
    return {"text_logits": m.embed.head_text(_t(feeds["hidden"])).numpy()}


@torch.no_grad()
def ref_decoder(m: ChatTTSModules, feeds: Arrays) -> Arrays:
    hidden = _t(feeds["hidden"]).transpose(1, 2).contiguous()
    return {"mel": m.decoder(hidden).numpy()}


@torch.no_grad()
def ref_dvae_decode(m: ChatTTSModules, feeds: Arrays) -> Arrays:
    codes = _t(feeds["codes"]).transpose(1, 2).contiguous()
    return {"mel": m.dvae(codes).numpy()}


@torch.no_grad()
def ref_vocos(m: ChatTTSModules, feeds: Arrays) -> Arrays:
    return {"waveform": m.vocos.decode(_t(feeds["mel"])).numpy()}


def random_feeds(m: ChatTTSModules, spk_emb_id: int, seed: int = 0) -> dict[str, Arrays]:
    """Random inputs per graph: batch 2, a left-padded row, a past cache, a speaker row."""
    rng = np.random.default_rng(seed)
    s = m.sizes
    b, t, p, n = 2, 5, 3, 6
    ids = rng.integers(1, s.text_vocab_size, size=(b, t))
    ids[0, 1] = spk_emb_id
    ids[1] = np.where(ids[1] == spk_emb_id, 1, ids[1])
    spk = np.stack([rng.normal(size=s.hidden_size), np.zeros(s.hidden_size)]).astype(np.float32)
    mask = np.ones((b, p + t), dtype=np.int64)
    mask[1, :2] = 0
    positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)[:, p:]
    gpt: Arrays = {
        "inputs_embeds": rng.normal(size=(b, t, s.hidden_size)).astype(np.float32),
        "attention_mask": mask,
        "position_ids": positions.astype(np.int64),
    }
    for i in range(s.num_layers):
        for kv in ("key", "value"):
            shape = (b, s.num_heads, p, s.head_dim)
            gpt[f"past_{kv}_{i}"] = rng.normal(size=shape).astype(np.float32)
    return {
        "embed_text": {"input_ids": ids.astype(np.int64), "spk_emb": spk},
        "embed_code": {"codes": rng.integers(0, 626, size=(b, t, NUM_VQ)).astype(np.int64)},
        "gpt": gpt,
        "head_text": {"hidden": rng.normal(size=(b, s.hidden_size)).astype(np.float32)},
        "decoder": {"hidden": rng.normal(size=(b, n, s.hidden_size)).astype(np.float32)},
        "dvae_decode": {"codes": rng.integers(0, 625, size=(b, n, NUM_VQ)).astype(np.int64)},
        "vocos": {"mel": rng.normal(size=(b, s.n_mels, 2 * n)).astype(np.float32)},
    }


def references(m: ChatTTSModules, spk_emb_id: int) -> dict[str, Callable[[Arrays], Arrays]]:
    return {
        "embed_text": lambda f: ref_embed_text(m, spk_emb_id, f),
        "embed_code": lambda f: ref_embed_code(m, f),
        "gpt": lambda f: ref_gpt(m, f),
        "head_text": lambda f: ref_head_text(m, f),
        "decoder": lambda f: ref_decoder(m, f),
        "dvae_decode": lambda f: ref_dvae_decode(m, f),
        "vocos": lambda f: ref_vocos(m, f),
    }


def max_abs_diff(session: ort.InferenceSession, feeds: Arrays, expected: Arrays) -> float:
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, feeds), strict=True))
    worst = 0.0
    for name, ref in expected.items():
        if got[name].shape != ref.shape:
            raise AssertionError(f"{name}: shape {got[name].shape} != reference {ref.shape}")
        worst = max(worst, float(np.max(np.abs(got[name] - ref))) if ref.size else 0.0)
    return worst


def check_pack_parity(m: ChatTTSModules, files: dict[str, Path], spk_emb_id: int,
                      tolerance: float) -> dict[str, float]:
    """Each graph file on random inputs vs the package; raises if any exceeds `tolerance`."""
    feeds = random_feeds(m, spk_emb_id)
    refs = references(m, spk_emb_id)
    diffs = {}
    for name, path in files.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        diffs[name] = max_abs_diff(session, feeds[name], refs[name](feeds[name]))
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}
    if bad:
        raise AssertionError(f"ChatTTS parity above {tolerance}: {bad}")
    return diffs
