"""
The GPT, two recipes behind one switch (GPTConfig.recipe); docs/METHOD.md "The model" has the sources.
'modern' (default), the small-GPT recipe of nanochat and modded-nanogpt: rotary positions, RMSNorm
without a gain (also after the embedding), QK-norm, a ReLU^2 MLP, no biases, zero-initialized output
projections, the embedding and the head tied or not (tie_embeddings).
'gpt2', nanoGPT's GPT-2 recipe (learned positions, LayerNorm, GELU, tied embeddings, N(0, 0.02) init):
the reference the modern recipe is measured against (bench.py --what=quality).
Both: causal attention through scaled_dot_product_attention, a loss with ignore_index=-1 (SFT masks
reuse the forward), a batched KV cache, and `generate`, which samples annotation first and then the
response when asked, each at its own temperature (docs/METHOD.md "Inference").
configure_optimizers: 'muon' (Muon for the 2-D matrices in the blocks, AdamW for the rest) or 'adamw'
(AdamW for everything); each parameter group carries its base learning rate ('base_lr'), which the
training loop scales by one schedule.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from formats import IGNORE

RECIPES = ('modern', 'gpt2')


@dataclass
class GPTConfig:
    block_size: int = 256
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    recipe: str = 'modern'  # 'modern' or 'gpt2' (see the module docstring)
    tie_embeddings: bool = False  # modern only (gpt2 is always tied)
    rope_base: float = 10000.0  # modern: rotary base frequency


def norm(x):
    """RMSNorm without a learnable gain: the modern recipe's only normalization."""
    return F.rms_norm(x, (x.size(-1),))


def make_norm(config):
    """A normalization layer: RMSNorm without a gain (modern), or GPT-2's LayerNorm (no bias)."""
    if config.recipe == 'modern':
        return nn.RMSNorm(config.n_embd, elementwise_affine=False)
    return nn.LayerNorm(config.n_embd, bias=False)


def rotary_table(config):
    """(cos, sin) of the angle t * base^(-2j/head_dim) for position t and channel pair j, as a real
    (block_size, head_dim/2, 2) tensor (a complex buffer would not go through DDP's broadcast)."""
    hd = config.n_embd // config.n_head
    inv_freq = config.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rotary(x, rope):
    """Rotate the channel pairs (2j, 2j+1) of x (B, T, nh, hd) by the angles of its positions,
    rope (T, hd/2, 2) or per row (B, T, hd/2, 2). As complex numbers: one multiplication, which on
    CPU is ~3x faster than the cos/sin form."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * torch.view_as_complex(rope).unsqueeze(-2)).flatten(3).type_as(x)


def attention_mask(slots, pad, cached):
    """The boolean attention mask (B or 1, 1, T, S) of T new positions `slots` after the cached
    ones, or None where plain causal attention (or, for one new cached token, none) will do.
    Left padding (pad: (B,) counts) is never attended to; a padding query attends to itself only,
    so that its softmax is never empty (its output is never used)."""
    T = len(slots)
    if pad is None and (not cached or T == 1):
        return None
    S = int(slots[-1]) + 1  # a host sync, but only in generation's prefill or padded steps
    keys = torch.arange(S, device=slots.device)
    mask = keys[None, :] <= slots[:, None]  # causal, shifted by the cached positions
    if pad is None:
        return mask[None, None]
    own = keys[None, None, :] == slots[None, :, None]
    return ((mask[None] & (keys[None, None, :] >= pad[:, None, None])) | own)[:, None]


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
        self.modern = config.recipe == 'modern'
        # separate q, k, v matrices: Muon orthogonalizes each one's update on its own
        self.c_q, self.c_k, self.c_v = (nn.Linear(config.n_embd, config.n_embd, bias=False) for _ in range(3))
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(self, x, rope, cache=None, mask=None):
        B, T, C = x.size()
        q, k, v = (c(x).view(B, T, self.n_head, C // self.n_head) for c in (self.c_q, self.c_k, self.c_v))
        if self.modern:  # rotary positions, then QK-norm
            q, k = norm(apply_rotary(q, rope)), norm(apply_rotary(k, rope))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hd)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if mask is None and cache is None:  # training: plain causal attention (flash on GPU)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:  # an explicit mask, or (None) one new cached token that attends to everything
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.modern = config.recipe == 'modern'

    def forward(self, x):
        h = self.c_fc(x)
        if self.modern:
            h = F.relu(h)
            h = h * h  # ReLU^2; on CPU h * h is ~2x faster than h.square() (pow's backward)
        else:
            h = F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), rope, cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        if config.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {config.recipe!r}")
        self.config = config
        self.modern = config.recipe == 'modern'
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if not self.modern:
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if self.tied:
            self.transformer.wte.weight = self.lm_head.weight
        # derived from the config: not saved in checkpoints
        self.register_buffer('rope', rotary_table(config), persistent=False)
        self.init_weights()

    @property
    def tied(self):
        return not self.modern or self.config.tie_embeddings

    @torch.no_grad()
    def init_weights(self):
        """gpt2: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 n_layer) (GPT-2).
        modern (nanochat): matrices uniform with std 1/sqrt(fan_in), output projections zero, so
        every block starts as the identity; an untied embedding N(0, 1) (it is RMS-normed anyway)
        and head N(0, 0.001), so the first logits are near uniform; a tied one N(0, 0.02)."""
        for name, p in self.named_parameters():
            if not self.modern:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith('c_proj.weight') else 0.02
                if p.dim() >= 2:
                    nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith('c_proj.weight'):
                nn.init.zeros_(p)
            elif name in ('transformer.wte.weight', 'lm_head.weight'):  # tied: one tensor, the first name
                std = 0.02 if self.tied else 1.0 if name == 'transformer.wte.weight' else 0.001
                nn.init.normal_(p, mean=0.0, std=std)
            elif p.dim() == 2:
                bound = math.sqrt(3.0 / p.size(1))  # uniform with std 1/sqrt(fan_in)
                nn.init.uniform_(p, -bound, bound)

    def num_params(self, non_embedding=True):
        """Parameter count; tables that are only looked up (positions, an untied input embedding)
        are left out by default, as in nanoGPT: what is left is what the matmuls use."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if not self.modern:
                n -= self.transformer.wpe.weight.numel()
            if not self.tied:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None, all_logits=False, pad=None, targets_only=False):
        """Logits for idx (B, T). With targets: the logits of every position and the mean loss over
        targets != IGNORE (formats.py: the targets the loss skips). Without: only the last position's
        logits (inference), unless all_logits. With a cache: idx continues the cached positions.
        pad (B,): rows are left-padded by that many tokens (prompts of different lengths in one
        batch): each row keeps its own positions and never attends to its padding.
        targets_only (with targets): the head runs only at the positions with a target, and no
        logits are returned."""
        B, T = idx.size()
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        slots = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        pos = slots if pad is None else (slots[None, :] - pad[:, None]).clamp(min=0)  # (T,) or (B, T)
        x = self.transformer.wte(idx)
        x = norm(x) if self.modern else x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        rope = self.rope[pos] if self.modern else None
        mask = attention_mask(slots, pad, cache is not None)
        for block in self.transformer.h:
            x = block(x, rope, cache, mask)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is None:  # inference: only the last position is needed
            return self.lm_head(x if all_logits else x[:, [-1], :]), None
        if targets_only:
            # post-training: an SFT batch is mostly prompt, masked annotation and padding, and at this
            # size the head is a third of a position's FLOPs (bench.py --what=sft: 1.1-1.3x a step).
            # Not in pretraining, where every position is a target and a data-dependent shape would
            # break torch.compile's graph.
            keep = targets != IGNORE
            return None, F.cross_entropy(self.lm_head(x[keep]).float(), targets[keep])
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                               ignore_index=IGNORE)
        return logits, loss

    def configure_optimizers(self, optimizer, learning_rate, matrix_lr, weight_decay, betas, device_type):
        """'adamw': AdamW at learning_rate, weight decay on 2-D weights only (nanoGPT).
        'muon': torch.optim.Muon at matrix_lr for the 2-D matrices inside the blocks, AdamW at
        learning_rate and without weight decay (nanochat) for the embedding, the head and 1-D
        parameters. Returns one optimizer-like
        object; every group records its base learning rate as 'base_lr' for the schedule."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        fused = device_type == 'cuda' and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        adamw = lambda groups: torch.optim.AdamW(groups, lr=learning_rate, betas=betas,
                                                 **({'fused': True} if fused else {}))
        if optimizer == 'adamw':
            opt = adamw([
                {'params': [p for p in params.values() if p.dim() >= 2], 'weight_decay': weight_decay},
                {'params': [p for p in params.values() if p.dim() < 2], 'weight_decay': 0.0},
            ])
            opts = [opt]
        elif optimizer == 'muon':
            hidden = [p for n, p in params.items() if n.startswith('transformer.h.') and p.dim() == 2]
            rest = [p for n, p in params.items() if not (n.startswith('transformer.h.') and p.dim() == 2)]
            opts = [torch.optim.Muon(hidden, lr=matrix_lr, weight_decay=weight_decay),
                    adamw([{'params': rest, 'weight_decay': 0.0}])]
        else:
            raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
        for o in opts:
            for g in o.param_groups:
                g['base_lr'] = g['lr']
        return Optimizers(opts)

    def flops_per_token(self):
        """Training FLOPs per token: 6 per matmul weight plus attention (PaLM appendix B)."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.num_params() + 12 * L * H * Q * T

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilization: achieved training FLOP/s over the device's peak FLOP/s."""
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_ids=(),
                 annotation_end=None, annotation_temperature=None, generator=None, use_cache=True,
                 vocab_limit=None, forced=None, pad=None, banned=None, annotation_banned=None):
        """Sample up to max_new_tokens continuations of idx (B, T), all rows at once.

        temperature 0 is greedy. A row stops after it emits one of stop_ids (its later positions
        are filled with the stop id and must be ignored). The paper's inference: with annotation_end
        (the id that closes an annotation, <|text|>) every row first samples its annotation, at
        annotation_temperature, and after emitting annotation_end its response, at temperature.
        vocab_limit: ids >= it (the padding of a vocabulary rounded up to 64) are never sampled.
        forced: optional (B, F) ids that rows emit instead of sampling at steps 0..F-1 (-1: sample),
        e.g. an annotation drawn from another model, of a different length in every row.
        pad: optional (B,) left padding of every row of idx, for prompts of different lengths.
        banned, annotation_banned: ids never sampled in the text, and in the annotation before it
        (e.g. the special tokens that cannot belong to a chat response: with their probability
        taken away, the rest of the distribution is renormalized, so a response stays a response).
        Returns (new tokens (B, n), finished (B,) bool: whether the row emitted a stop id).
        """
        B = idx.size(0)
        device = idx.device
        in_annotation = annotation_end is not None
        temp = torch.full((B,), float(annotation_temperature if in_annotation else temperature), device=device)
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
        in_ann = torch.full((B,), in_annotation, dtype=torch.bool, device=device)
        ban = self.ban_masks(banned, annotation_banned, vocab_limit, device)
        for _ in range(max_new_tokens):
            logits, _ = self(step_in if use_cache else torch.cat([idx] + out, dim=1), cache=cache, pad=pad)
            logits = logits[:, -1, :vocab_limit].float()
            if ban is not None:
                logits = logits.masked_fill(torch.where(in_ann[:, None], ban[1], ban[0]), float('-inf'))
            nxt = sample_next(logits, temp, top_k, top_p, generator)
            if forced is not None and len(out) < forced.size(1):
                f = forced[:, len(out)]
                nxt = torch.where(f >= 0, f, nxt)
            if len(stop):
                nxt = torch.where(done, stop[0], nxt)  # finished rows keep emitting padding
                done |= torch.isin(nxt, stop)
            if in_annotation:  # a row that closed its annotation writes its response from now on
                temp = torch.where(nxt == annotation_end, float(temperature), temp)
                in_ann &= nxt != annotation_end
            out.append(nxt[:, None])
            step_in = nxt[:, None]
            if len(stop) and bool(done.all()):
                break
        new = torch.cat(out, dim=1) if out else idx.new_zeros((B, 0))
        return new, done

    def ban_masks(self, banned, annotation_banned, vocab_limit, device):
        """(text mask, annotation mask), each (1, V) bool, True where an id is never sampled; None
        when nothing is banned (the logits are then untouched, so the samples are as before)."""
        if not banned and not annotation_banned:
            return None
        V = vocab_limit or self.config.vocab_size
        return tuple(_ban_vector(ids or (), V, device)[None] for ids in (banned, annotation_banned))


def _ban_vector(ids, V, device):
    v = torch.zeros(V, dtype=torch.bool, device=device)
    v[[i for i in ids if i < V]] = True
    return v


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
    # inverse-CDF sampling: one uniform number per row, where torch.multinomial draws one
    # exponential per row and token (on CPU that was 60% of the time of generating with the cache)
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    u = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    sampled = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cdf.size(1) - 1)
    return torch.where(temperature == 0, greedy, sampled)


class Optimizers:
    """Several torch optimizers stepped, zeroed, saved and restored as one (Muon + AdamW)."""

    def __init__(self, opts):
        self.opts = opts

    @property
    def param_groups(self):
        return [g for o in self.opts for g in o.param_groups]

    def step(self):
        for o in self.opts:
            o.step()

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, states):
        if not isinstance(states, list) or len(states) != len(self.opts):
            raise ValueError(f"optimizer state is not the {len(self.opts)} parts of this optimizer "
                             "(a checkpoint of another optimizer or an older version)")
        for o, s in zip(self.opts, states):
            o.load_state_dict(s)
