"""
The GPT, in nanoGPT's spirit: pre-LayerNorm blocks, causal self-attention through torch's
scaled_dot_product_attention (flash attention on GPU), GELU MLP, tied input/output embedding.

Additions for this project:
- the loss takes targets with ignore_index=-1, so SFT masks (prompt, annotation) reuse the forward;
- a KV cache, so that generating T new tokens for B sequences costs T one-token forward steps
  instead of re-running the whole context each step;
- `generate` samples in two phases when asked (annotation first, then response: the paper's
  inference procedure, section 1.4 of DESIGN.md), each with its own temperature.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

IGNORE_INDEX = -1


@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = False  # bias in Linears and LayerNorms; False is a bit better and faster


class KVCache:
    """Keys and values of every layer for B sequences, preallocated up to max_len positions."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        hd = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hd) of `layer` at the current position; return all keys/values so far."""
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.layer = layer
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            k, v = cache.update(self.layer, k, v)
            if T == 1:  # one new token attends to everything cached: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # a chunk of T tokens after `pos` cached ones: causal mask shifted by pos
                S = k.size(2)
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        """Parameter count; the position embedding is left out by default, as in nanoGPT."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, cache=None):
        """Logits for idx (B, T). With targets: the mean loss over targets != IGNORE_INDEX.
        With a cache: idx continues the cached positions, and only the last logits are returned."""
        B, T = idx.size()
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, cache)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # inference: only the last position is needed
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW; weight decay only on 2-D weights (matmuls, embeddings), not on biases or norms."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
        ]
        fused = device_type == 'cuda' and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({'fused': True} if fused else {}))

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the weights plus attention (PaLM appendix B)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.num_params() + 12 * L * H * Q * T

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved training FLOP/s over the device's peak FLOP/s."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 stop_ids=(), phase_id=None, phase_temperature=None, generator=None, use_cache=True,
                 vocab_limit=None, forced=None):
        """Sample up to max_new_tokens continuations of idx (B, T), all rows at once.

        temperature 0 is greedy. A row stops after it emits one of stop_ids (its later positions
        are filled with the stop id and must be ignored). If phase_id is given, a row samples at
        `temperature` until it emits phase_id and at `phase_temperature` after that: the anchored
        model samples its annotation, then its response, each at its own temperature.
        vocab_limit: ids >= it (the padding of a vocabulary rounded up to 64) are never sampled.
        forced: optional (B, F) ids that rows emit instead of sampling at steps 0..F-1 (-1: sample),
        e.g. an annotation drawn from another model, of a different length in every row.
        Returns (new tokens (B, n), finished (B,) bool: whether the row emitted a stop id).
        """
        B = idx.size(0)
        device = idx.device
        temp = torch.full((B,), float(temperature), device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        stop = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        max_new_tokens = min(max_new_tokens, self.config.block_size - idx.size(1))
        cache = None
        if use_cache:
            dtype = next(self.parameters()).dtype
            if torch.is_autocast_enabled(device.type):  # keys/values come out of autocast's matmuls
                dtype = torch.get_autocast_dtype(device.type)
            cache = KVCache(self.config, B, idx.size(1) + max_new_tokens, device, dtype)
        out, step_in = [], idx
        for _ in range(max_new_tokens):
            logits, _ = self(step_in if use_cache else torch.cat([idx] + out, dim=1), cache=cache)
            logits = logits[:, -1, :vocab_limit].float()
            nxt = sample_next(logits, temp, top_k, top_p, generator)
            if forced is not None and len(out) < forced.size(1):
                f = forced[:, len(out)]
                nxt = torch.where(f >= 0, f, nxt)
            if len(stop):
                nxt = torch.where(done, stop[0], nxt)  # finished rows keep emitting padding
                done |= torch.isin(nxt, stop)
            if phase_id is not None:
                temp = torch.where(nxt == phase_id, float(phase_temperature), temp)
            out.append(nxt[:, None])
            step_in = nxt[:, None]
            if len(stop) and bool(done.all()):
                break
        new = torch.cat(out, dim=1) if out else idx.new_zeros((B, 0))
        return new, done


def sample_next(logits, temperature, top_k=None, top_p=None, generator=None):
    """One token per row from logits (B, V); temperature is a (B,) tensor, 0 meaning greedy."""
    greedy = logits.argmax(dim=-1)
    t = temperature.clamp(min=1e-6)[:, None]
    logits = logits / t
    if top_k is not None and top_k > 0:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float('-inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) > top_p  # keep the smallest set with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float('-inf'))
        logits = torch.full_like(logits, float('-inf')).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.where(temperature == 0, greedy, sampled)
