"""Our own inference definition of Emotion2vec (FunASR's `Emotion2vec`), fully masked.

Parameter names mirror FunASR's module tree (`modality_encoders.AUDIO.local_encoder.
conv_layers.{i}.0.weight`, `blocks.{i}.attn.qkv.weight`, `proj.weight`, ...) so a real
checkpoint loads with `strict=True`; where FunASR nests an `nn.Sequential`, the child
names here are the same indices ("0", "2", ...), registered on small modules of our own.
Only what inference runs is defined: no decoder (its `decoder.*` keys are dropped by the
exporter, which says so), no masking for pre-training, no dropout.

Design note (padding)
---------------------
FunASR runs one item at a time; batching pads, and padding changes the shorter items'
results unless every stage that mixes frames is masked (measured in
../shared/notes/emotion2vec.md: unmasked |dlogit| 0.2). Here each stage is made exact:
- waveform layer norm (when `normalize`): mean and variance over the item's own samples;
- CNN feature extractor: frame t reads samples [t*stride, t*stride+kernel) only, so the
  valid frames (frames = conv formula of the length) never see padding: nothing to mask;
- positional convs (k=19, "same" padding): padded frames are zeroed before every conv,
  which is exactly what the unpadded item's zero padding looks like;
- attention: padded keys get -inf in the additive bias (ALiBi + key padding); the extra
  tokens are always valid, so no row is all -inf;
- pooling: mean over valid frames only.
Padded frames of the outputs are zeroed. There is no data-dependent branch: the graph
always masks, whether or not the batch is padded.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WAVE_NORM_EPS = 1e-5  # F.layer_norm's default, as FunASR's inference() uses it


@dataclass(frozen=True)
class Emotion2vecConfig:
    """The subset of config.yaml's `model_conf` that inference depends on."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    norm_eps: float
    norm_affine: bool
    layer_norm_first: bool
    normalize: bool
    conv_layers: tuple[tuple[int, int, int], ...]
    extractor_mode: str
    conv_pos_width: int
    conv_pos_depth: int
    conv_pos_groups: int
    conv_pos_pre_ln: bool
    prenet_depth: int
    num_extra_tokens: int
    use_alibi_encoder: bool
    learned_alibi_scale_per_layer: bool
    learned_alibi_scale_per_head: bool
    num_alibi_heads: int
    num_classes: int

    @property
    def pos_kernel(self) -> int:
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @classmethod
    def from_model_conf(cls, conf: Mapping[str, Any], num_classes: int) -> Emotion2vecConfig:
        audio = conf["modalities"]["audio"]
        mode = audio.get("extractor_mode", "layer_norm")
        if mode != "layer_norm":
            raise ValueError(f"extractor_mode {mode!r} is not supported (only 'layer_norm')")
        if audio.get("learned_alibi", False):
            raise ValueError("learned_alibi=true is not supported (emotion2vec+ does not use it)")
        heads = int(conf["num_heads"])
        alibi_heads = audio.get("num_alibi_heads")
        if not isinstance(alibi_heads, int):  # unset, or an OmegaConf `${...num_heads}` left as is
            alibi_heads = heads
        if alibi_heads != heads:
            raise ValueError(f"num_alibi_heads {alibi_heads} != num_heads {heads}: not supported")
        return cls(
            embed_dim=int(conf["embed_dim"]),
            depth=int(conf["depth"]),
            num_heads=heads,
            mlp_ratio=float(conf.get("mlp_ratio", 4.0)),
            norm_eps=float(conf.get("norm_eps", 1e-5)),
            norm_affine=bool(conf.get("norm_affine", True)),
            layer_norm_first=bool(conf.get("layer_norm_first", False)),
            normalize=bool(conf.get("normalize", False)),
            conv_layers=parse_conv_spec(str(audio["feature_encoder_spec"])),
            extractor_mode=mode,
            conv_pos_width=int(audio["conv_pos_width"]),
            conv_pos_depth=int(audio["conv_pos_depth"]),
            conv_pos_groups=int(audio["conv_pos_groups"]),
            conv_pos_pre_ln=bool(audio.get("conv_pos_pre_ln", False)),
            prenet_depth=int(audio["prenet_depth"]),
            num_extra_tokens=int(audio.get("num_extra_tokens", 0)),
            use_alibi_encoder=bool(audio.get("use_alibi_encoder", False)),
            learned_alibi_scale_per_layer=bool(audio.get("learned_alibi_scale_per_layer", False)),
            learned_alibi_scale_per_head=bool(audio.get("learned_alibi_scale_per_head", False)),
            num_alibi_heads=alibi_heads,
            num_classes=num_classes,
        )


def parse_conv_spec(spec: str) -> tuple[tuple[int, int, int], ...]:
    """`"[(512, 10, 5)] + [(512, 3, 2)] * 4"` -> layers, without `eval` (FunASR evals it)."""
    tree = ast.parse(spec, mode="eval").body

    def walk(node: ast.AST) -> list[tuple[int, int, int]]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return walk(node.left) * int(ast.literal_eval(node.right))
        value = ast.literal_eval(node)
        return [tuple(int(v) for v in layer) for layer in value]  # type: ignore[misc]

    layers = walk(tree)
    if not layers or any(len(layer) != 3 for layer in layers):
        raise ValueError(f"feature_encoder_spec {spec!r}: expected [(dim, kernel, stride), ...]")
    return tuple(layers)


ConvSpec = tuple[tuple[int, int, int], ...]


def frame_count(lengths: torch.Tensor, conv_layers: ConvSpec) -> torch.Tensor:
    """Frames the CNN yields for `lengths` samples: per layer floor((L - k) / s) + 1, >= 0."""
    frames = lengths
    for _, kernel, stride in conv_layers:
        frames = torch.div(frames - kernel, stride, rounding_mode="floor") + 1
        frames = frames.clamp(min=0)
    return frames


def alibi_slopes(heads: int) -> list[float]:
    """ALiBi head slopes (Press et al.), with the usual fix-up for non-power-of-2 counts."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


class _Named(nn.Module):
    """A container whose children carry FunASR's `nn.Sequential` indices as names."""

    def __init__(self, children: Mapping[str, nn.Module]) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def child(self, name: str) -> nn.Module:
        module: nn.Module = getattr(self, name)
        return module


class ConvBlock(nn.Module):
    """Conv (no bias) -> LayerNorm over channels (fp32) -> GELU; names `0` and `2.1`."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.add_module("0", nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=False))
        self.add_module("2", _Named({"1": nn.LayerNorm(n_out, elementwise_affine=True)}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, "0")(x)
        norm = getattr(self, "2").child("1")
        x = norm(x.transpose(1, 2).float()).transpose(1, 2)
        return F.gelu(x)


class LocalEncoder(nn.Module):
    def __init__(self, conv_layers: tuple[tuple[int, int, int], ...]) -> None:
        super().__init__()
        dims = [1] + [d for d, _, _ in conv_layers]
        self.conv_layers = nn.ModuleList(
            ConvBlock(dims[i], d, k, s) for i, (d, k, s) in enumerate(conv_layers)
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = wav.unsqueeze(1)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # [B, C, F]


class PosConvLayer(nn.Module):
    """Grouped conv ("same" padding) -> affine-free LayerNorm -> GELU; the conv is `0`."""

    def __init__(self, dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.dim = dim
        self.add_module("0", nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, D, F]
        x = getattr(self, "0")(x)
        if self.kernel % 2 == 0:  # FunASR's SamePad drops the extra last frame
            x = x[:, :, :-1]
        x = F.layer_norm(x.transpose(1, 2), (self.dim,)).transpose(1, 2)
        return F.gelu(x)


class AltAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias
        attn = attn.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AltBlock(nn.Module):
    def __init__(self, cfg: Emotion2vecConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attn = AltAttention(d, cfg.num_heads)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.attn(self.norm1(x), bias)
            r = self.mlp(self.norm2(x))
            return r + r  # as upstream: `r = x = mlp(...)`, then `x = r + x` (data2vec 2.0)
        x = self.norm1(x + self.attn(x, bias))
        return self.norm2(x + self.mlp(x))


class BlockEncoder(nn.Module):
    def __init__(self, cfg: Emotion2vecConfig) -> None:
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.blocks = nn.ModuleList(AltBlock(cfg) for _ in range(cfg.prenet_depth))
        self.norm = (
            None if cfg.layer_norm_first
            else nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        )


class AudioEncoder(nn.Module):
    """FunASR's `modality_encoders.AUDIO` minus the decoder."""

    def __init__(self, cfg: Emotion2vecConfig) -> None:
        super().__init__()
        d, c = cfg.embed_dim, cfg.conv_layers[-1][0]
        self.local_encoder = LocalEncoder(cfg.conv_layers)
        self.project_features = _Named({"1": nn.LayerNorm(c), "2": nn.Linear(c, d)})
        layers = {
            str(i + 1): PosConvLayer(d, cfg.pos_kernel, cfg.conv_pos_groups)
            for i in range(cfg.conv_pos_depth)
        }
        pos: nn.Module = _Named(layers)
        if cfg.conv_pos_pre_ln:
            pos = _Named({"0": nn.LayerNorm(d), "1": pos})
        self.relative_positional_encoder = pos
        self.context_encoder = BlockEncoder(cfg)
        if cfg.num_extra_tokens > 0:
            self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, d))
        if cfg.use_alibi_encoder:
            layers_n = cfg.prenet_depth + cfg.depth if cfg.learned_alibi_scale_per_layer else 1
            heads_n = cfg.num_alibi_heads if cfg.learned_alibi_scale_per_head else 1
            self.alibi_scale = nn.Parameter(torch.ones(layers_n, 1, heads_n, 1, 1))


@dataclass(frozen=True)
class Emotion2vecOutput:
    logits: torch.Tensor  # [B, C]: proj(embedding)
    embedding: torch.Tensor  # [B, D]: masked mean of the frame features
    frame_logits: torch.Tensor  # [B, F, C]: proj per frame (padded frames: proj(0))
    feats: torch.Tensor  # [B, F, D], padded frames zero
    frame_lengths: torch.Tensor  # [B] int64


class Emotion2vec(nn.Module):
    """`(wav [B, T], lengths [B]) -> Emotion2vecOutput`; names match FunASR's state dict."""

    def __init__(self, cfg: Emotion2vecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.modality_encoders = nn.ModuleDict({"AUDIO": AudioEncoder(cfg)})
        self.blocks = nn.ModuleList(AltBlock(cfg) for _ in range(cfg.depth))
        self.norm = (
            nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
            if cfg.layer_norm_first else None
        )
        self.proj = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.register_buffer(
            "slopes", torch.tensor(alibi_slopes(cfg.num_alibi_heads)), persistent=False
        )

    @property
    def audio(self) -> AudioEncoder:
        enc: AudioEncoder = self.modality_encoders["AUDIO"]  # type: ignore[assignment]
        return enc

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> Emotion2vecOutput:
        lengths = lengths.to(torch.int64)
        sample_mask = torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]
        if self.cfg.normalize:
            wav = _masked_wave_norm(wav, sample_mask, lengths)
        wav = wav * sample_mask.to(wav.dtype)

        enc = self.audio
        x = enc.local_encoder(wav).transpose(1, 2)  # [B, F, C]
        x = enc.project_features.child("2")(enc.project_features.child("1")(x))
        frame_lengths = frame_count(lengths, self.cfg.conv_layers)
        n_frames = x.shape[1]
        frame_mask = torch.arange(n_frames, device=x.device)[None, :] < frame_lengths[:, None]
        keep = frame_mask.to(x.dtype)[:, :, None]
        x = x + self._positions(x * keep, keep)

        alibi, key_mask = self._attention_bias(n_frames, frame_mask, x.dtype)
        scales = self._alibi_scales()
        n_extra = self.cfg.num_extra_tokens
        if n_extra > 0:
            x = torch.cat([enc.extra_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        ctx = enc.context_encoder
        if ctx.norm is not None:
            x = ctx.norm(x)
        layers = [*ctx.blocks, *self.blocks]
        for i, block in enumerate(layers):
            # the mask is added after scaling: -inf x a scale clamped to 0 would be NaN
            x = block(x, key_mask if scales is None else alibi * scales[i] + key_mask)
        if self.norm is not None:
            x = self.norm(x)

        feats = x[:, n_extra:] * keep
        count = frame_lengths.clamp(min=1).to(feats.dtype)[:, None]
        embedding = feats.sum(dim=1) / count
        return Emotion2vecOutput(
            logits=self.proj(embedding),
            embedding=embedding,
            frame_logits=self.proj(feats),
            feats=feats,
            frame_lengths=frame_lengths,
        )

    def _positions(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The relative positional convs, zeroing padded frames before each conv."""
        pos = self.audio.relative_positional_encoder
        if self.cfg.conv_pos_pre_ln:
            x = pos.child("0")(x) * keep
            pos = pos.child("1")
        h = x.transpose(1, 2)
        mask = keep.transpose(1, 2)
        for i in range(self.cfg.conv_pos_depth):
            h = pos.child(str(i + 1))(h * mask)
        return h.transpose(1, 2)

    def _attention_bias(self, n_frames: int, frame_mask: torch.Tensor, dtype: torch.dtype
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """ALiBi [1, H, N, N] over frames (zero rows/columns for the extra tokens), and the
        key padding mask [B, 1, 1, N]: 0 for valid keys, -inf for padded frames."""
        n_extra = self.cfg.num_extra_tokens
        pos = torch.arange(n_frames, device=frame_mask.device)
        dist = -(pos[None, :] - pos[:, None]).abs().to(dtype)
        alibi = self.slopes.to(dtype)[:, None, None] * dist[None]  # [H, F, F]
        alibi = F.pad(alibi, (n_extra, 0, n_extra, 0))[None]
        key_ok = torch.cat([torch.ones(frame_mask.shape[0], n_extra, dtype=torch.bool,
                                       device=frame_mask.device), frame_mask], 1)
        key_mask = torch.zeros(key_ok.shape, dtype=dtype, device=key_ok.device)
        key_mask = key_mask.masked_fill(~key_ok, float("-inf"))[:, None, None, :]
        return alibi, key_mask

    def _alibi_scales(self) -> list[torch.Tensor] | None:
        """Per block [1, H|1, 1, 1] scale, clamped at 0 as upstream; None without ALiBi."""
        if not self.cfg.use_alibi_encoder:
            return None
        scale = self.audio.alibi_scale.clamp(min=0)
        total = self.cfg.prenet_depth + self.cfg.depth
        per_layer = self.cfg.learned_alibi_scale_per_layer
        return [scale[i] if per_layer else scale[0] for i in range(total)]


def _masked_wave_norm(wav: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
                      ) -> torch.Tensor:
    """Per-item layer norm over the valid samples only (biased variance, eps 1e-5)."""
    m = mask.to(wav.dtype)
    n = lengths.clamp(min=1).to(wav.dtype)[:, None]
    mean = (wav * m).sum(dim=1, keepdim=True) / n
    var = (((wav - mean) * m) ** 2).sum(dim=1, keepdim=True) / n
    return (wav - mean) / torch.sqrt(var + WAVE_NORM_EPS)


def build_model(model_conf: Mapping[str, Any], num_classes: int) -> Emotion2vec:
    return Emotion2vec(Emotion2vecConfig.from_model_conf(model_conf, num_classes)).eval()
