"""The fused CLAP variant (`laion/clap-htsat-fused`) made exportable.

Upstream `ClapAudioPatchEmbed.forward` runs the fusion block only on the rows whose
`is_longer` is set, chosen with a data-dependent index (`torch.where(...)[0]` and an
`if len(...) > 0`): the legacy tracer freezes that branch and dynamo refuses it. Here the
fusion block runs on every row and `torch.where` on the row mask picks its output or the
plain global patches. Every op in that block is per-row (eval BatchNorm, per-sample
pooling), so each row's result equals upstream's (checked at export against the original
module with mixed, all-false and all-true masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import ClapModel

FUSED_AUDIO_INPUTS = ["input_features", "is_longer"]


class BranchFreePatchEmbed(nn.Module):
    """Wraps an upstream ClapAudioPatchEmbed (fusion enabled); `mask` is set per call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, is_longer_idx: Any = None) -> torch.Tensor:
        pe, mask = self.inner, self.mask
        assert mask is not None, "set .mask before calling"
        global_states = pe.proj(hidden_states[:, 0:1])
        width = global_states.size(-1)
        local = hidden_states[:, 1:]
        batch, crops, height, frames = local.shape
        local = pe.mel_conv2d(local.reshape(batch * crops, 1, height, frames))
        _, features, out_h, out_w = local.shape
        local = local.reshape(batch, crops, features, out_h, out_w)
        local = local.permute(0, 2, 3, 1, 4).flatten(3)
        local = nn.functional.pad(local, (0, width - local.size(-1)))
        fused = pe.fusion_model(global_states, local)
        states = torch.where(mask.reshape(-1, 1, 1, 1), fused, global_states)
        if pe.flatten:
            states = states.flatten(2).transpose(1, 2)
        return pe.norm(states)


class FusedAudioEmbedder(nn.Module):
    """input_features [B,4,frames,mels], is_longer [B,1] bool -> normalised embeddings."""

    def __init__(self, model: ClapModel) -> None:
        super().__init__()
        self.audio_model = model.audio_model
        self.audio_projection = model.audio_projection
        self.patch = BranchFreePatchEmbed(self.audio_model.audio_encoder.patch_embed)

    def forward(self, input_features: torch.Tensor, is_longer: torch.Tensor) -> torch.Tensor:
        encoder = self.audio_model.audio_encoder
        original = encoder.patch_embed
        encoder.patch_embed = self.patch
        self.patch.mask = is_longer.reshape(-1).to(torch.bool)
        try:
            pooled = self.audio_model(input_features=input_features,
                                      is_longer=is_longer).pooler_output
        finally:
            encoder.patch_embed = original
            self.patch.mask = None
        return nn.functional.normalize(self.audio_projection(pooled), dim=-1)


def reference_embeds(model: ClapModel, features: torch.Tensor,
                     is_longer: torch.Tensor) -> torch.Tensor:
    """Upstream's own path (data-dependent branch and all), for parity checks."""
    pooled = model.audio_model(input_features=features, is_longer=is_longer).pooler_output
    return nn.functional.normalize(model.audio_projection(pooled), dim=-1)


def export_fused_audio(model: ClapModel, path: Path, *, frames: int, mels: int) -> None:
    gen = torch.Generator().manual_seed(1)
    example = torch.randn(2, 4, frames, mels, generator=gen)
    is_longer = torch.tensor([[True], [False]])
    torch.onnx.export(
        FusedAudioEmbedder(model).eval(), (example, is_longer), str(path), dynamo=False,
        opset_version=17, input_names=FUSED_AUDIO_INPUTS, output_names=["audio_embeds"],
        dynamic_axes={"input_features": {0: "batch"}, "is_longer": {0: "batch"},
                      "audio_embeds": {0: "batch"}},
    )
