"""The ChatTTS package's own PyTorch modules, built from a size config (no `Chat.load`).

`Chat.load()` cannot run offline (it downloads or checks fixed hashes), so the export and
the tests build the package's classes directly: `Embed`, `GPT` (+ transformers
`LlamaModel`), `DVAE` as the Decoder (no quantiser) and as the DVAE (with GFSQ), and
`vocos.Vocos` - seeded random weights for tiny/real-size configs, or the official asset
files. `reference_chat` assembles a `ChatTTS.Chat` around them so tests can run upstream's
whole pipeline as the reference.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pybase16384 as b14
import torch
from ChatTTS.config import Config
from ChatTTS.model import DVAE, GPT, Embed
from transformers import LlamaModel
from vocos import Vocos
from vocos.feature_extractors import MelSpectrogramFeatures
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

log = logging.getLogger("audioserve.export.chattts")

NUM_VQ = 4
_LAYER_SCALE = re.compile(r"(decoder_block\.\d+\.weight|convnext\.\d+\.gamma)$")
NUM_AUDIO_TOKENS = 626  # 625 FSQ codes (levels 5^4) + EOS


@dataclass(frozen=True)
class ConvStack:
    """Sizes of a ChatTTS `DVAEDecoder` (used by both the Decoder and the DVAE)."""

    idim: int
    odim: int
    hidden: int
    n_layer: int
    bn_dim: int


@dataclass(frozen=True)
class ChatTTSSizes:
    """Every size the modules need; `real()` mirrors the package's `Config()`."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int
    text_vocab_size: int
    decoder: ConvStack
    dvae_decoder: ConvStack
    vq_dim: int
    vocos_dim: int
    vocos_intermediate: int
    vocos_layers: int
    max_position_embeddings: int = 4096
    n_fft: int = 1024
    hop_length: int = 256
    sample_rate: int = 24000
    n_mels: int = 100
    vq_levels: tuple[int, ...] = field(default=(5, 5, 5, 5))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def real(cls) -> ChatTTSSizes:
        c = Config()
        return cls(
            hidden_size=c.gpt.hidden_size,
            intermediate_size=c.gpt.intermediate_size,
            num_heads=c.gpt.num_attention_heads,
            num_layers=c.gpt.num_hidden_layers,
            text_vocab_size=c.gpt.num_text_tokens,
            decoder=ConvStack(**dataclasses.asdict(c.decoder)),
            dvae_decoder=ConvStack(**dataclasses.asdict(c.dvae.decoder)),
            vq_dim=c.dvae.vq.dim,
            vocos_dim=c.vocos.backbone.init_args.dim,
            vocos_intermediate=c.vocos.backbone.init_args.intermediate_dim,
            vocos_layers=c.vocos.backbone.init_args.num_layers,
            max_position_embeddings=c.gpt.max_position_embeddings,
            vq_levels=tuple(c.dvae.vq.levels),
        )

    @classmethod
    def tiny(cls, text_vocab_size: int) -> ChatTTSSizes:
        """Small enough to export and run in seconds; same classes, same audio constants."""
        return cls(
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            num_layers=2,
            text_vocab_size=text_vocab_size,
            decoder=ConvStack(idim=16, odim=16, hidden=32, n_layer=2, bn_dim=16),
            dvae_decoder=ConvStack(idim=16, odim=16, hidden=32, n_layer=2, bn_dim=16),
            vq_dim=32,
            vocos_dim=32,
            vocos_intermediate=64,
            vocos_layers=2,
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChatTTSModules:
    sizes: ChatTTSSizes
    embed: Embed
    gpt: GPT
    decoder: DVAE  # hidden states -> mel (upstream's default `use_decoder=True` path)
    dvae: DVAE  # codes -> mel through the GFSQ tables
    vocos: Vocos
    spk_stat: np.ndarray  # float16 [2 * hidden]: std then mean


def gpt_config(sizes: ChatTTSSizes) -> dict[str, Any]:
    """The dict upstream's `GPT.__init__` turns into a `LlamaConfig` (Config().gpt's keys)."""
    return {
        "hidden_size": sizes.hidden_size,
        "intermediate_size": sizes.intermediate_size,
        "num_attention_heads": sizes.num_heads,
        "num_hidden_layers": sizes.num_layers,
        "use_cache": False,
        "max_position_embeddings": sizes.max_position_embeddings,
        "spk_emb_dim": 192,
        "spk_KL": False,
        "num_audio_tokens": NUM_AUDIO_TOKENS,
        "num_text_tokens": sizes.text_vocab_size,
        "num_vq": NUM_VQ,
    }


def _vocos(sizes: ChatTTSSizes) -> Vocos:
    features = MelSpectrogramFeatures(
        sample_rate=sizes.sample_rate, n_fft=sizes.n_fft, hop_length=sizes.hop_length,
        n_mels=sizes.n_mels, padding="center",
    )
    backbone = VocosBackbone(
        input_channels=sizes.n_mels, dim=sizes.vocos_dim,
        intermediate_dim=sizes.vocos_intermediate, num_layers=sizes.vocos_layers,
    )
    head = ISTFTHead(dim=sizes.vocos_dim, n_fft=sizes.n_fft, hop_length=sizes.hop_length,
                     padding="center")
    return Vocos(feature_extractor=features, backbone=backbone, head=head).eval()


def _dvae_pair(sizes: ChatTTSSizes, coef: str | None) -> tuple[DVAE, DVAE]:
    """(decoder, dvae) sharing one `coef`, as `Chat._load` builds them."""
    vq = {"dim": sizes.vq_dim, "levels": sizes.vq_levels, "G": 2, "R": 2}
    dvae = DVAE(decoder_config=dataclasses.asdict(sizes.dvae_decoder), vq_config=vq,
                dim=sizes.dvae_decoder.idim, coef=coef)
    decoder = DVAE(decoder_config=dataclasses.asdict(sizes.decoder), dim=sizes.decoder.idim,
                   coef=str(dvae))
    return decoder.eval(), dvae.eval()


def _gpt(sizes: ChatTTSSizes, embed: Embed) -> GPT:
    gpt = GPT(gpt_config=gpt_config(sizes), embed=embed).eval()
    llama = LlamaModel(gpt.llama_config)
    del llama.embed_tokens  # upstream deletes it too: inputs are always embeddings
    gpt.gpt = llama.eval()
    return gpt


def _spread_layer_scales(modules: list[torch.nn.Module], gen: torch.Generator) -> None:
    """ConvNeXt layer scales start at 1e-6 (ChatTTS) or 1/L (Vocos), which would make random
    blocks near-identities and parity checks blind to them: give them real magnitudes."""
    for module in modules:
        for name, param in module.named_parameters():
            if _LAYER_SCALE.search(name):
                param.data = 0.1 + 0.2 * torch.rand(param.shape, generator=gen)


def build_random(sizes: ChatTTSSizes, seed: int) -> ChatTTSModules:
    """Seeded random weights (default inits, then layer scales spread); deterministic."""
    torch.manual_seed(seed)
    embed = Embed(sizes.hidden_size, NUM_AUDIO_TOKENS, sizes.text_vocab_size, NUM_VQ).eval()
    gpt = _gpt(sizes, embed)
    decoder, dvae = _dvae_pair(sizes, coef=None)
    vocos = _vocos(sizes)
    _spread_layer_scales([decoder, dvae, vocos], torch.Generator().manual_seed(seed + 1))
    table = embed.emb_text.weight.detach().double()
    spk_stat = torch.cat([table.std(0), table.mean(0)]).numpy().astype(np.float16)
    return ChatTTSModules(sizes, embed, gpt, decoder, dvae, vocos, spk_stat)


def _asset_dir(root: Path) -> Path:
    return root / "asset" if (root / "asset").is_dir() else root


def load_assets(root: Path, sizes: ChatTTSSizes | None = None) -> ChatTTSModules:
    """The official asset layout (`asset/gpt/`, `asset/{Embed,DVAE,Decoder,Vocos}.safetensors`,
    `asset/tokenizer/`), loaded through the package's own `load_pretrained` methods."""
    from ChatTTS.utils import load_safetensors

    asset = _asset_dir(root)
    sizes = sizes or ChatTTSSizes.real()
    for name in ("gpt", "Embed.safetensors", "DVAE.safetensors", "Decoder.safetensors",
                 "Vocos.safetensors"):
        if not (asset / name).exists():
            raise FileNotFoundError(f"ChatTTS assets: {asset / name} is missing")
    embed = Embed(sizes.hidden_size, NUM_AUDIO_TOKENS, sizes.text_vocab_size, NUM_VQ)
    embed.load_pretrained(str(asset / "Embed.safetensors"), device=torch.device("cpu"))
    gpt = GPT(gpt_config=gpt_config(sizes), embed=embed.eval()).eval()
    gpt.load_pretrained(str(asset / "gpt"), str(asset / "Embed.safetensors"))
    gpt.gpt.eval()
    decoder, dvae = _dvae_pair(sizes, coef=None)
    dvae.load_pretrained(str(asset / "DVAE.safetensors"), torch.device("cpu"))
    decoder.load_pretrained(str(asset / "Decoder.safetensors"), torch.device("cpu"))
    vocos = _vocos(sizes)
    vocos.load_state_dict(load_safetensors(str(asset / "Vocos.safetensors")))
    return ChatTTSModules(sizes, embed, gpt, decoder.eval(), dvae.eval(), vocos.eval(),
                          asset_spk_stat(asset))


def asset_spk_stat(asset: Path) -> np.ndarray:
    """spk_stat.npy / spk_stat.pt if the folder has one, else the string in `Config()` (0.2.x
    ships the statistics inside the package config, base16384 of float16[1536])."""
    if (asset / "spk_stat.npy").is_file():
        return np.load(asset / "spk_stat.npy").astype(np.float16).reshape(-1)
    if (asset / "spk_stat.pt").is_file():
        return torch.load(asset / "spk_stat.pt").numpy().astype(np.float16).reshape(-1)
    raw = b14.decode_from_string(Config().spk_stat)
    return np.frombuffer(raw, dtype=np.float16).copy()


def save_assets(modules: ChatTTSModules, root: Path) -> Path:
    """Write modules in the official asset layout (tests exercise `--assets` with tiny ones)."""
    from safetensors.torch import save_file

    asset = root / "asset"
    asset.mkdir(parents=True, exist_ok=True)
    modules.gpt.gpt.save_pretrained(asset / "gpt", safe_serialization=True)
    for name, module in (("Embed", modules.embed), ("DVAE", modules.dvae),
                         ("Decoder", modules.decoder), ("Vocos", modules.vocos)):
        state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(asset / f"{name}.safetensors"))
    np.save(asset / "spk_stat.npy", modules.spk_stat)
    return asset


def spk_stat_string(spk_stat: np.ndarray) -> str:
    """The base16384 form `ChatTTS.model.Speaker` takes (Config().spk_stat)."""
    return b14.encode_to_string(spk_stat.astype(np.float16).tobytes())


def reference_chat(modules: ChatTTSModules, tokenizer_dir: Path) -> Any:
    """A `ChatTTS.Chat` wired to these modules: upstream's whole pipeline, as the reference."""
    from ChatTTS import Chat
    from ChatTTS.model import Speaker, Tokenizer

    chat = Chat(log)
    device = torch.device("cpu")
    chat.device = chat.device_gpt = device
    chat.vocos, chat.dvae, chat.decoder = modules.vocos, modules.dvae, modules.decoder
    chat.embed, chat.gpt = modules.embed, modules.gpt
    chat.speaker = Speaker(modules.sizes.hidden_size, spk_stat_string(modules.spk_stat), device)
    chat.tokenizer = Tokenizer(str(tokenizer_dir))
    chat.coef = str(modules.decoder)
    return chat
