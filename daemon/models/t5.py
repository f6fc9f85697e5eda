"""The umt5-xxl text encoder as Wan2.1 / MultiTalk use it, and the prompt → context wrapper.

Parameter names are exactly those of the released `models_t5_umt5-xxl-enc-bf16.pth`, so the
file loads with `load_state_dict(strict=True)` and no renaming. Every size is read from the
tensor shapes of the file (real: vocab 256384, dim 4096, 64 heads, ffn 10240, 24 layers,
32 buckets).

umt5 differs from the original T5 in ways that matter for the numbers:
  * every block has its own relative-position embedding (no sharing across blocks);
  * attention scores are not scaled by 1/√d;
  * the FFN is gated: fc2(fc1(x) · GELU_tanh(gate(x))).

`T5TextEncoder` is the pipeline's entry: prompts → cleaned → tokenized to text_len from the
Wan folder's google/umt5-xxl/tokenizer.json → encoder → per-prompt contexts out[i, :tokens_i].
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import ftfy
import regex
import torch
from tokenizers import Tokenizer
from torch import nn

from daemon.models.loader import WeightsError, download_hint, load_pth, require_file

T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"   # inside the Wan folder
TEXT_LEN = 512                          # Wan's text_len: prompts are padded/truncated to it
PAD_TOKEN = "<pad>"

# umt5 distances beyond this share the last bucket; the file does not store it.
MAX_DISTANCE = 128
NORM_EPS = 1e-6


@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    dim: int
    dim_attn: int
    dim_ffn: int
    num_heads: int
    num_layers: int
    num_buckets: int
    max_distance: int = MAX_DISTANCE
    eps: float = NORM_EPS

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], source: Path | str) -> T5Config:
        """Sizes from tensor shapes; `source` names the file in errors."""
        try:
            vocab_size, dim = state["token_embedding.weight"].shape
            num_layers = _count_blocks(state, "blocks.{}.norm1.weight")
            dim_attn = state["blocks.0.attn.q.weight"].shape[0]
            dim_ffn = state["blocks.0.ffn.fc1.weight"].shape[0]
            # [num_buckets, heads]: the only place the head count is written down
            num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
        except KeyError as exc:
            raise WeightsError(f"{source} is not a umt5 encoder state_dict (no {exc}) — "
                               f"{download_hint(Path(source))}") from exc
        if num_layers == 0 or dim_attn % num_heads:
            raise WeightsError(f"{source}: {num_layers} blocks, attention width {dim_attn} for "
                               f"{num_heads} heads — not a umt5 encoder; {download_hint(Path(source))}")
        return cls(vocab_size=vocab_size, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn,
                   num_heads=num_heads, num_layers=num_layers, num_buckets=num_buckets)


def _count_blocks(state: dict[str, torch.Tensor], pattern: str) -> int:
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Layers, in forward order

class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias, computed in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(self.weight.dtype)


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bidirectional T5 buckets for key − query offsets.

    Half the buckets per direction (keys after the query take the upper half); within a
    half, distances below a quarter of the buckets are exact, the rest log-spaced up to
    `max_distance` and saturating in the last bucket.
    """
    half = num_buckets // 2
    bucket = (rel_pos > 0).long() * half
    distance = rel_pos.abs()
    max_exact = half // 2
    # Same operation order as the reference, so the float32 truncation lands identically;
    # the clamp only keeps log() off 0 (short distances take the exact branch).
    log_ratio = (torch.log(distance.clamp(min=max_exact).float() / max_exact)
                 / math.log(max_distance / max_exact))
    far = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


class T5RelativeEmbedding(nn.Module):
    def __init__(self, num_buckets: int, num_heads: int, max_distance: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.embedding.weight.device)
        rel_pos = pos[None, :] - pos[:, None]                    # [Lq, Lk] key − query
        buckets = relative_position_bucket(rel_pos, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]    # [1, N, Lq, Lk]


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """q, k, v [B, N, L, D]; bias [B, N, Lq, Lk] added to the unscaled scores.

    Not daemon.models.attention: T5 needs an additive bias (positions + padding) and no
    1/√d scaling (folded into its initialisation), so scores run large and the softmax is
    rounding-sensitive. Plain matmuls with a float32 softmax, the reference's formulation,
    stay ~2× closer to its float32 numbers than fused SDPA. It runs once per render.
    """
    scores = q @ k.transpose(-1, -2) + bias
    return scores.float().softmax(dim=-1).to(q.dtype) @ v


class T5Attention(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim_attn, bias=False)
        self.o = nn.Linear(cfg.dim_attn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = (proj(x).view(b, length, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))          # [B, N, L, D]
        x = biased_attention(q, k, v, bias)
        return self.o(x.transpose(1, 2).reshape(b, length, -1))


class T5FeedForward(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        # `gate.0`: a Sequential in the released file
        self.gate = nn.Sequential(nn.Linear(cfg.dim, cfg.dim_ffn, bias=False),
                                  nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.fc2 = nn.Linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    # umt5 activations overflow float16; the reference clamps them (bf16/fp32 never need it).
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg)
        self.norm2 = T5LayerNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads,
                                                 cfg.max_distance)

    def forward(self, x: torch.Tensor, key_is_pad: torch.Tensor) -> torch.Tensor:
        # key_is_pad [B, 1, 1, L]: padded keys get the most negative value instead of the bias.
        bias = self.pos_embedding(x.shape[1]).to(x.dtype)
        bias = bias.masked_fill(key_is_pad, torch.finfo(x.dtype).min)   # [B, N, L, L]
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5LayerNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] (mask 1 = token, 0 = padding) → [B, L, dim] at every position."""
        x = self.token_embedding(ids)
        key_is_pad = (mask == 0)[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_is_pad)
        return self.norm(x)


def trim_to_prompts(out: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Per-prompt contexts out[i, :tokens_i] — what the pipeline hands to the DiT."""
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [row[:n] for row, n in zip(out, lengths)]


def load_t5_encoder(path: Path, *, device: torch.device | str,
                    dtype: torch.dtype) -> T5Encoder:
    """The released encoder file, straight to `device`/`dtype`, built on meta (no extra copy)."""
    path = Path(path)
    state = load_pth(path, device=device, dtype=dtype)
    cfg = T5Config.from_state_dict(state, path)
    with torch.device("meta"):
        model = T5Encoder(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match the umt5 encoder layout ({exc}) — "
                           f"{download_hint(path)}") from exc
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Prompts → contexts

def clean_prompt(text: str) -> str:
    """The reference's 'whitespace' cleaning: ftfy repair, HTML entities (twice), one space."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    # `regex` as the reference: unlike `re`, its \s leaves U+001C–U+001F alone.
    return regex.sub(r"\s+", " ", text).strip()


@dataclass
class TokenizedPrompts:
    ids: torch.Tensor    # [B, text_len] int64: tokens, </s>, then <pad> (0)
    mask: torch.Tensor   # [B, text_len] int64: 1 for tokens and </s>, 0 for padding


class PromptTokenizer:
    """umt5 tokenization to a fixed length, from the folder's tokenizer.json as released.

    The reference ran transformers 4.x, whose fast T5 tokenizer *is* this file's pipeline
    (normalizer, pre-tokenizer, `$A </s>` post-processor). transformers 5 instead rebuilds a
    T5 pipeline from the vocabulary, so we run the file with the `tokenizers` library and set
    the same right-side truncation (keeping </s>) and max-length padding the wrapper sets.
    """

    def __init__(self, tokenizer: Tokenizer, text_len: int, source: Path | str = "tokenizer"):
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise WeightsError(f"{source} has no {PAD_TOKEN} token — not the umt5 tokenizer; "
                               f"{download_hint(Path(source))}")
        self.tokenizer = tokenizer
        self.tokenizer.enable_truncation(max_length=text_len, strategy="longest_first",
                                         direction="right")
        self.tokenizer.enable_padding(length=text_len, direction="right", pad_id=pad_id,
                                      pad_type_id=0, pad_token=PAD_TOKEN)
        self.text_len = text_len

    @classmethod
    def from_folder(cls, folder: Path, text_len: int = TEXT_LEN) -> PromptTokenizer:
        """`folder` is the Wan download's google/umt5-xxl/ (it holds tokenizer.json)."""
        path = require_file(Path(folder) / "tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable tokenizer ({exc}) — "
                               f"{download_hint(path)}") from exc
        return cls(tokenizer, text_len, source=path)

    def __call__(self, prompts: list[str]) -> TokenizedPrompts:
        encodings = self.tokenizer.encode_batch([clean_prompt(p) for p in prompts],
                                                add_special_tokens=True)
        return TokenizedPrompts(
            ids=torch.tensor([e.ids for e in encodings], dtype=torch.int64),
            mask=torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64))


class T5TextEncoder:
    """Prompts → per-prompt contexts [tokens_i, dim], as the official T5EncoderModel call."""

    def __init__(self, encoder: T5Encoder, tokenizer: PromptTokenizer):
        self.encoder = encoder
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, wan_dir: Path, *, device: torch.device | str, dtype: torch.dtype,
             text_len: int = TEXT_LEN) -> T5TextEncoder:
        """The encoder and tokenizer of a Wan2.1 download folder."""
        wan_dir = Path(wan_dir)
        tokenizer = PromptTokenizer.from_folder(wan_dir / T5_TOKENIZER_DIR, text_len)
        encoder = load_t5_encoder(wan_dir / T5_CHECKPOINT, device=device, dtype=dtype)
        return cls(encoder, tokenizer)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(prompts)
        device = self.encoder.token_embedding.weight.device
        ids, mask = tokens.ids.to(device), tokens.mask.to(device)
        return trim_to_prompts(self.encoder(ids, mask), mask)
