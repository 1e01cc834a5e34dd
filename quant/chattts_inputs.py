"""ChatTTS evaluation inputs, and greedy code agreement through the GPT graph.

Every graph is fed what the one before it produces at fp32, starting from the code-pass
prompts (`[Stts][empty_spk][speed_5]{text}[Ptts]`, left-padded to one length as the engine
pads them): embed_text -> gpt (prefill, empty cache) -> head_text / decoder -> vocos;
embed_code and dvae_decode get seeded random codes. Equal lengths make each item a row
of the batch, so batch invariance is checked without padding effects.

Token agreement is measured on the GPT graph directly (the engine's fixed-seed sampling
run is not used): 16 greedy decode steps of the whole prompt batch, free-running (each
precision follows its own argmax) and teacher-forced (each step fed fp32's codes).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from service.runtime.packs import ModelPack
from service.runtime.sessions import RuntimeConfig, create_session

Feed = dict[str, np.ndarray]
STEPS = 16
DECODE_PAST = 128
CPU = RuntimeConfig(provider="cpu")


def _session(pack: ModelPack, graph: str, precision: str = "fp32") -> ort.InferenceSession:
    path, _ = pack.graph(graph, precision)
    return create_session(path, CPU)


def _out(session: ort.InferenceSession, feeds: Feed, name: str) -> np.ndarray:
    out: np.ndarray = session.run([name], feeds)[0]
    return out


def prompt_ids(pack: ModelPack, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded code-pass prompt ids and their mask, int64 [N, T]."""
    c = pack.constants
    tok = Tokenizer.from_file(str(pack.file("tokenizer")))
    tok.no_padding()
    tok.no_truncation()
    texts = [c["code_prompt_template"].format(speaker=c["no_speaker_token"], txt_smp="",
                                              speed=c["default_speed_token"], text=p)
             for p in prompts]
    rows = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), int(c["pad_token_id"]), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def _positions(mask: np.ndarray) -> np.ndarray:
    """Upstream's rule: cumsum(mask) - 1, padded positions set to 1."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, pos).astype(np.int64)


def _empty_cache(pack: ModelPack, batch: int) -> Feed:
    c = pack.constants
    shape = (batch, int(c["num_heads"]), 0, int(c["head_dim"]))
    return {f"past_{kv}_{i}": np.zeros(shape, np.float32)
            for i in range(int(c["num_layers"])) for kv in ("key", "value")}


def gpt_prefill_feeds(pack: ModelPack, prompts: list[str]) -> Feed:
    ids, mask = prompt_ids(pack, prompts)
    spk = np.zeros((len(ids), int(pack.constants["spk_emb_dim"])), np.float32)
    embeds = _out(_session(pack, "embed_text"), {"input_ids": ids, "spk_emb": spk},
                  "inputs_embeds")
    return {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": _positions(mask),
            **_empty_cache(pack, len(ids))}


@lru_cache(maxsize=2)
def _prefill_hidden(root: Path, prompts: tuple[str, ...]) -> np.ndarray:
    from service.runtime.packs import load_pack

    pack = load_pack(root)
    return _out(_session(pack, "gpt"), gpt_prefill_feeds(pack, list(prompts)), "hidden")


def _batched(pack: ModelPack, graph: str, prompts: tuple[str, ...], seed: int) -> Feed:
    """fp32 feeds for one graph, rows = items; only the graphs it depends on are run."""
    c = pack.constants
    if graph in ("embed_text", "gpt"):
        ids, _ = prompt_ids(pack, list(prompts))
        if graph == "gpt":
            return gpt_prefill_feeds(pack, list(prompts))
        return {"input_ids": ids,
                "spk_emb": np.zeros((len(ids), int(c["spk_emb_dim"])), np.float32)}
    if graph in ("embed_code", "dvae_decode"):
        ids, _ = prompt_ids(pack, list(prompts))
        return {"codes": np.random.default_rng(seed).integers(
            0, int(c["audio_eos"]), (len(ids), ids.shape[1], int(c["num_vq"])), dtype=np.int64)}
    hidden = _prefill_hidden(pack.root.resolve(), prompts)
    if graph == "head_text":
        return {"hidden": np.ascontiguousarray(hidden[:, -1])}
    if graph == "decoder":
        return {"hidden": hidden}
    if graph == "vocos":
        return {"mel": _out(_session(pack, "decoder"), {"hidden": hidden}, "mel")}
    raise SystemExit(f"no evaluation inputs known for chattts/{graph}")


def chattts_items(pack: ModelPack, graph: str, prompts: list[str], *, count: int,
                  seed: int) -> list[Feed]:
    cycled = tuple((prompts * (count // max(1, len(prompts)) + 1))[:count])
    batch = _batched(pack, graph, cycled, seed)
    return [{k: v[i: i + 1] for k, v in batch.items()} for i in range(count)]


def greedy_codes(pack: ModelPack, precision: str, prefill: Feed,
                 forced: np.ndarray | None = None) -> np.ndarray:
    """[B, STEPS, num_vq] argmax codes; with `forced`, step t+1 is fed forced[:, t]."""
    gpt, embed = _session(pack, "gpt", precision), _session(pack, "embed_code", precision)
    layers = int(pack.constants["num_layers"])
    names = ["code_logits"] + [f"present_{kv}_{i}" for i in range(layers)
                               for kv in ("key", "value")]
    feeds, mask = dict(prefill), prefill["attention_mask"]
    out = []
    for step in range(STEPS):
        logits, *present = gpt.run(names, feeds)
        codes = logits.argmax(axis=-1)
        out.append(codes)
        fed = codes if forced is None else forced[:, step]
        mask = np.concatenate([mask, np.ones((len(mask), 1), np.int64)], axis=1)
        feeds = {"inputs_embeds": _out(embed, {"codes": fed[:, None, :]}, "inputs_embeds"),
                 "attention_mask": mask,
                 "position_ids": feeds["position_ids"][:, -1:] + 1,
                 **{n.replace("present_", "past_"): v
                    for n, v in zip(names[1:], present, strict=True)}}
    return np.stack(out, axis=1)


def decode_step_feeds(pack: ModelPack, batch: int, past: int, seed: int = 0) -> Feed:
    """One decode step (T = 1) on a random past of `past` positions."""
    c = pack.constants
    rng = np.random.default_rng(seed)
    heads, dim, hidden = int(c["num_heads"]), int(c["head_dim"]), int(c["hidden_size"])
    feeds: Feed = {
        "inputs_embeds": rng.standard_normal((batch, 1, hidden)).astype(np.float32),
        "attention_mask": np.ones((batch, past + 1), np.int64),
        "position_ids": np.full((batch, 1), past, np.int64),
    }
    for i in range(int(c["num_layers"])):
        for kv in ("key", "value"):
            feeds[f"past_{kv}_{i}"] = rng.standard_normal(
                (batch, heads, past, dim)).astype(np.float32)
    return feeds


def batched_vs_alone(pack: ModelPack, precision: str, prompts: list[str],
                     batched: np.ndarray | None = None) -> float:
    """Fraction of greedy codes that are the same batched (left-padded, as the engine
    pads) and alone; 1.0 is what the service promises."""
    if batched is None:
        batched = greedy_codes(pack, precision, gpt_prefill_feeds(pack, prompts))
    alone = np.concatenate([greedy_codes(pack, precision, gpt_prefill_feeds(pack, [p]))
                            for p in prompts])
    return float(np.mean(batched == alone))
