"""Exportable wrappers around the package's ChatTTS modules, one per pack graph.

Each wrapper calls the package's own sub-modules (`LlamaModel`, `emb_text`, `DVAEDecoder`,
`VocosBackbone`, ...) and only re-expresses the glue that does not export:
- the `[spk_emb]` replacement as `where` on the token ids (upstream `Speaker.apply`);
- the weight-normed heads as plain Linears holding the effective weight;
- the GFSQ lookups as precomputed tables (`vector_quantize_pytorch` bakes shapes in);
- Vocos' complex `torch.istft` as a real matmul inverse DFT + overlap-add (design note on
  `VocosGraph`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from ChatTTS.model import DVAE, GPT, Embed
from torch import nn
from transformers.cache_utils import DynamicCache
from vocos import Vocos


def fold_weight_norm(head: nn.Module) -> nn.Linear:
    """A plain Linear with the weight-normed module's effective weight `g * v / |v|`."""
    weight = head.weight.detach().clone()
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight
    return linear.eval()


class EmbedText(nn.Module):
    """Text embedding; `[spk_emb]` positions take the L2-normalised speaker embedding.

    Upstream always holds the speaker as float16 (decoded from its string form) and
    normalises it in float16 arithmetic (`F.normalize` on a half tensor: the norm and the
    quotient each rounded to half). That rounding is reproduced here so an ORT pipeline
    matches the package's bit for bit; a zero row (no speaker) stays zero.
    """

    def __init__(self, embed: Embed, spk_emb_id: int) -> None:
        super().__init__()
        self.emb_text = embed.emb_text
        self.spk_emb_id = spk_emb_id

    def forward(self, input_ids: torch.Tensor, spk_emb: torch.Tensor) -> torch.Tensor:
        emb = self.emb_text(input_ids)
        spk = spk_emb.half().float()
        norm = torch.linalg.vector_norm(spk, dim=1, keepdim=True).half().float()
        speaker = (spk / norm.clamp_min(1e-12)).half().float().unsqueeze(1)
        is_speaker = (input_ids == self.spk_emb_id).unsqueeze(-1)
        return torch.where(is_speaker, speaker.expand_as(emb), emb)


class EmbedCode(nn.Module):
    """Sum of the per-codebook embeddings (upstream `Embed.forward`, code positions)."""

    def __init__(self, embed: Embed) -> None:
        super().__init__()
        self.emb_code = embed.emb_code

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        emb = self.emb_code[0](codes[..., 0])
        for q in range(1, len(self.emb_code)):
            emb = emb + self.emb_code[q](codes[..., q])
        return emb


class GPTStep(nn.Module):
    """One forward of the LlamaModel over new positions with an explicit KV cache.

    The same graph serves prefill (past length 0) and decode steps; the code heads run on
    the last position only, as upstream's sampler only reads `logits[:, -1]`.
    """

    def __init__(self, gpt: GPT, embed: Embed) -> None:
        super().__init__()
        self.llama = gpt.gpt
        self.heads = nn.ModuleList([fold_weight_norm(h) for h in embed.head_code])
        self.num_layers = self.llama.config.num_hidden_layers

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, past: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = DynamicCache(ddp_cache_data=pairs)
        past_len = past[0].shape[2]
        cache_position = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
        out = self.llama(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            cache_position=cache_position + past_len,
        )
        hidden = out.last_hidden_state
        last = hidden[:, -1]
        logits = torch.stack([head(last) for head in self.heads], dim=1)
        presents: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (hidden, logits, *presents)


class HeadText(nn.Module):
    def __init__(self, embed: Embed) -> None:
        super().__init__()
        self.head = fold_weight_norm(embed.head_text)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


def _dvae_tail(dvae: DVAE, feats: torch.Tensor) -> torch.Tensor:
    """Upstream `DVAE.forward` after the quantiser: [B, C, N] -> 2 frames per step -> mel."""
    b, c, n = feats.shape
    x = feats.reshape(b, 2, c // 2, n).permute(0, 2, 3, 1).reshape(b, c // 2, 2 * n)
    return dvae.out_conv(dvae.decoder(x)) * dvae.coef


class DecoderGraph(nn.Module):
    """GPT hidden states of N generated tokens -> mel [B, 100, 2N]."""

    def __init__(self, decoder: DVAE) -> None:
        super().__init__()
        self.dvae = decoder

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _dvae_tail(self.dvae, hidden.transpose(1, 2))


class DVAEDecodeGraph(nn.Module):
    """Codes [B, N, 4] -> mel, the GFSQ lookup done on precomputed `codebook * scale` tables.

    Column q of the codes is group q // R, residual q % R (upstream `GFSQ._embed` views the
    4 columns as (G, R)).
    """

    def __init__(self, dvae: DVAE) -> None:
        super().__init__()
        self.dvae = dvae
        quantizer = dvae.vq_layer.quantizer
        self.groups = len(quantizer.rvqs)
        self.residuals = dvae.vq_layer.R
        tables = [rvq.codebooks * rvq.scales.unsqueeze(1) for rvq in quantizer.rvqs]
        self.register_buffer("tables", torch.stack(tables).detach().clone())  # [G, R, 625, d]
        self.project_out = nn.ModuleList([rvq.project_out for rvq in quantizer.rvqs])

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        outs = []
        for g in range(self.groups):
            summed = self.tables[g, 0][codes[..., g * self.residuals]]
            for r in range(1, self.residuals):
                summed = summed + self.tables[g, r][codes[..., g * self.residuals + r]]
            outs.append(self.project_out[g](summed))
        return _dvae_tail(self.dvae, torch.cat(outs, dim=-1).transpose(1, 2))


class VocosGraph(nn.Module):
    """Mel -> waveform: Vocos backbone and ISTFT head, then `torch.istft(center=True)` redone
    with real arithmetic.

    Design note: for a one-sided spectrum X (n_fft/2+1 bins) the inverse real DFT is
    x[n] = sum_k c_k (Re X_k cos(2 pi k n / N) - Im X_k sin(2 pi k n / N)) / N with c_k = 1 for
    DC and Nyquist, 2 otherwise (the imaginary parts of DC and Nyquist drop out, as irfft
    does); the synthesis window is folded into the two matrices. As n_fft is a multiple of
    hop, overlap-add is the sum of the frames' n_fft/hop hop-long pieces shifted by their
    index, which needs no (n_fft x n_fft) ConvTranspose kernel. The result is divided by the
    overlapped squared window and n_fft/2 samples trimmed at both ends, like torch.istft.
    """

    def __init__(self, vocos: Vocos) -> None:
        super().__init__()
        head = vocos.head
        self.backbone = vocos.backbone
        self.out = head.out
        istft = head.istft
        n_fft, hop = istft.n_fft, istft.hop_length
        if n_fft % hop:
            raise ValueError(f"n_fft {n_fft} must be a multiple of hop {hop}")
        self.n_fft, self.hop, self.pieces = n_fft, hop, n_fft // hop
        window = istft.window.double()
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64).unsqueeze(1)
        n = torch.arange(n_fft, dtype=torch.float64).unsqueeze(0)
        scale = torch.full_like(k, 2.0 / n_fft)
        scale[0] = scale[-1] = 1.0 / n_fft
        angle = 2 * torch.pi * k * n / n_fft
        self.register_buffer("cos_basis", (scale * torch.cos(angle) * window).float())
        self.register_buffer("sin_basis", (scale * torch.sin(angle) * window).float())
        self.register_buffer("window_sq", (window**2).float().reshape(self.pieces, hop))

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, M, pieces, hop] -> [B, (M + pieces - 1) * hop]."""
        last = self.pieces - 1
        total = F.pad(frames[:, :, 0], (0, 0, 0, last))
        for r in range(1, self.pieces):
            total = total + F.pad(frames[:, :, r], (0, 0, r, last - r))
        return total.flatten(1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.out(self.backbone(mel)).transpose(1, 2)
        mag, phase = x.chunk(2, dim=1)
        mag = torch.clip(torch.exp(mag), max=1e2)
        real = (mag * torch.cos(phase)).transpose(1, 2)  # [B, M, bins]
        imag = (mag * torch.sin(phase)).transpose(1, 2)
        frames = real @ self.cos_basis - imag @ self.sin_basis  # [B, M, n_fft], windowed
        b, m = frames.shape[0], frames.shape[1]
        audio = self._overlap_add(frames.reshape(b, m, self.pieces, self.hop))
        ones = torch.ones_like(frames[:1, :, :1]).unsqueeze(-1)  # [1, M, 1, 1]
        envelope = self._overlap_add(ones * self.window_sq)
        trim = self.n_fft // 2
        return (audio / envelope)[:, trim:-trim]
