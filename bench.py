"""
Benchmarks, nanoGPT's bench.py idea: time one thing at a time, side by side in one run, each pair
alternated, best of 2 (a shared, noisy machine keeps ratios, not absolute times).

    python bench.py config/small.py                         # training step, new vs old recipe: ms/iter, tok/s, MFU
    python bench.py config/gpt2_small.py --compile=True     # on a GPU: bf16, fused AdamW, flash SDPA
    python bench.py config/small.py --what=sample           # batched KV-cache sampling vs the naive loop
    python bench.py config/small.py --what=quality          # val loss per second: new vs old recipe
    python bench.py config/small.py --what=sft --threads=1  # SFT step: the head at the targets only vs everywhere
    python bench_annotate.py                                # annotate.py at corpus scale (its own script)

What each one compares and how: docs/METHOD.md, "Benchmarks".
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from common import UserError, check_config, check_device, main_guard
from formats import IGNORE, load_meta
from model import GPT, GPTConfig
from training import DTYPES, autocast, check_model_config, padded_vocab, peak_flops, resolve_dtype, setup_device

# -----------------------------------------------------------------------------
what = 'train'  # 'train', 'sample', 'quality' or 'sft' (see above)
batch_size = 16
block_size = 256
vocab_size = 4096
n_layer = 4
n_head = 4
n_embd = 256
recipe = 'modern'
tie_embeddings = False
optimizer = 'muon'
dropout = 0.0
warmup_steps = 3  # not timed (compilation, allocator, caches)
steps = 10
device = 'auto'
dtype = 'auto'
compile = False
cpu_peak_flops = 0.0  # your CPU's peak FLOP/s for an MFU figure on CPU (GPUs: a table)
sample_batch = 16  # sequences sampled at once with the KV cache
new_tokens = 192  # = study.py's max_new_tokens
prompt_tokens = 16
data_dir = 'data/wiki'  # what='quality': the annotate.py output whose plain stream both recipes learn
quality_eval_interval = 25  # what='quality': iterations between val losses (the curve's resolution)
seed = 1337
threads = 0
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


# the reference recipe at the laptop size: GPT-2 architecture, AdamW, cosine schedule (nanoGPT)
OLD_RECIPE = dict(recipe='gpt2', optimizer='adamw', lr_schedule='cosine', learning_rate=2e-3, final_lr_frac=0.1,
                  warmup_iters=50, max_iters=500, n_layer=4, n_head=4, n_embd=128, block_size=256, batch_size=16,
                  gradient_accumulation_steps=1, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, dropout=0.0)


@dataclass(frozen=True)
class Timing:
    """How every benchmark times a step: under autocast to dtype, the first warmup_steps not timed
    (compilation, allocator, caches), then steps timed."""
    dtype: str
    warmup_steps: int
    steps: int


def sync(device_type):
    if device_type == 'cuda':
        torch.cuda.synchronize()


def seconds_per_step(model, opt, batches, device_type, timing, **kw):
    """Mean seconds of a full training step (forward, backward, optimizer) over batches (x, y), the
    first timing.warmup_steps not timed; kw goes to the model's forward."""
    ctx = autocast(device_type, timing.dtype)
    for i, (x, y) in enumerate(batches):
        if i == timing.warmup_steps:
            sync(device_type)
            t0 = time.time()
        with ctx:
            loss = model(x, y, **kw)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device_type)
    return (time.time() - t0) / (len(batches) - timing.warmup_steps)


def bench_train(model, env, opt_kind, batch_size, timing, compile_model, cpu_peak_flops):
    """ms/iter and tokens/s of full training steps (forward, backward, optimizer) on random tokens,
    batch_size rows of the model's block_size."""
    opt = model.configure_optimizers(opt_kind, 1e-4, 1e-3, 0.1, (0.9, 0.95), env['device_type'])
    step_model = torch.compile(model) if compile_model else model
    vocab_size, block_size = model.config.vocab_size, model.config.block_size
    x = torch.randint(vocab_size, (batch_size, block_size), device=env['device'])
    y = torch.randint(vocab_size, (batch_size, block_size), device=env['device'])
    dt = seconds_per_step(step_model, opt, [(x, y)] * (timing.warmup_steps + timing.steps), env['device_type'], timing)
    tokens = batch_size * block_size
    flops = peak_flops(env['device_type'], cpu_peak_flops)
    mfu = f"{model.estimate_mfu(tokens, dt, flops) * 100:.1f}%" if flops else 'n/a (give --cpu_peak_flops)'
    name = torch.cuda.get_device_name() if env['device_type'] == 'cuda' else 'cpu'
    achieved = model.flops_per_token() * tokens / dt  # model FLOP/s, whatever the device's peak
    print(f"train step on {name} ({resolve_dtype(env['device_type'], timing.dtype)}, compile={compile_model}), "
          f"{model.config.recipe} + {opt_kind}: {model.num_params() / 1e6:.2f}M params, "
          f"batch {batch_size}x{block_size}: {dt * 1000:.1f} ms/iter, "
          f"{tokens / dt:,.0f} tokens/s, {achieved / 1e9:,.1f} GFLOP/s, MFU {mfu}")
    return tokens / dt


def bench_sft(make_model, optimizer, env, configs, data_dir, block_size, timing, seed):
    """SFT steps on the real SFT rows of data_dir, batched as anchor_sft.py batches them with the SFT
    keys of the config files (sft: the rows alone; sft-replay: + replayed plain documents; anchored:
    annotated rows + replayed annotated documents): the head at every position against the head only
    at the targets (model.py's targets_only), the same batches, alternated, best of 2."""
    import anchor_sft
    if not os.path.isfile(os.path.join(data_dir, 'meta.json')):
        raise UserError(f"no annotate.py output in {data_dir}: run python annotate.py {' '.join(configs)} first")
    sft = configure(dict(anchor_sft.config), configs)  # anchor_sft.py's defaults, with the SFT keys of these files
    meta = load_meta(data_dir)
    pick = anchor_sft.RowPick(sft['sft_topics'], sft['sft_max_rows'], sft['key_fraction'], sft['seed'])
    arms = (('sft', 'sft', 0), ('sft-replay', 'sft', sft['replay_rows']), ('anchored', 'anchored', sft['replay_rows']))
    for arm, method, replay_rows in arms:
        rows, _, stream = anchor_sft.load_sft_data(data_dir, meta, block_size, method == 'anchored', replay_rows, pick)
        replay = anchor_sft.Replay(stream, replay_rows, sft['replay_docs']) if stream is not None else None
        get_batch = anchor_sft.make_get_batch(rows['train'], env['device'], meta['special_tokens'],
                                              sft['sft_batch_size'], sft['gradient_accumulation_steps'],
                                              replay=replay, annotated=method == 'anchored')
        gen = torch.Generator().manual_seed(seed)
        batches = [get_batch('train', gen, [0])[0] for _ in range(timing.warmup_steps + timing.steps)]
        share = sum(float((b[1] != IGNORE).float().mean()) for b in batches) / len(batches)
        best = {}
        for _ in range(2):  # alternate, keep each one's best: a shared machine only ever slows a run down
            for targets_only in (False, True):
                torch.manual_seed(seed)
                model = make_model(padded_vocab(meta))
                opt = model.configure_optimizers(optimizer, 1e-4, 1e-3, 0.1, (0.9, 0.95), env['device_type'])
                dt = seconds_per_step(model, opt, batches, env['device_type'], timing, targets_only=targets_only)
                best[targets_only] = min(best.get(targets_only, float('inf')), dt)
        print(f"SFT step, {arm} ({len(batches[0][0])} rows a batch, {share:.0%} of the positions targets): "
              f"head everywhere {best[False] * 1000:.0f} ms, at the targets only "
              f"{best[True] * 1000:.0f} ms: {best[False] / best[True]:.2f}x")


def bench_sample(model, env, dtype, sample_batch, new_tokens, prompt_tokens):
    """tokens/s of sampling new_tokens for sample_batch sequences at once with the KV cache, against
    the naive loop, one sequence at a time, the whole context for every token."""
    model.eval()
    ctx = autocast(env['device_type'], dtype, training=False)
    prompt = torch.randint(model.config.vocab_size, (1, prompt_tokens), device=env['device'])

    def timed(fn):
        sync(env['device_type'])
        t0 = time.time()
        with ctx:
            fn()
        sync(env['device_type'])
        return time.time() - t0

    with ctx:
        model.generate(prompt, 4, temperature=1.0)  # warm-up
    cached = timed(lambda: model.generate(prompt.repeat(sample_batch, 1), new_tokens, temperature=1.0))
    naive = timed(lambda: [model.generate(prompt, new_tokens, temperature=1.0, use_cache=False)
                           for _ in range(sample_batch)])
    n = sample_batch * new_tokens
    print(f"sampling {sample_batch} sequences x {new_tokens} new tokens, {model.num_params() / 1e6:.2f}M params:")
    print(f"  naive (whole context per token, one sequence at a time): {n / naive:,.0f} tokens/s")
    print(f"  batched KV cache:                                        {n / cached:,.0f} tokens/s")
    print(f"  speed-up: {naive / cached:.1f}x")


def val_curve(out_dir):
    """[(training seconds, val loss)] of a pretrain.py run, from its log.json."""
    with open(os.path.join(out_dir, 'log.json')) as f:
        return [(h['time'], h['val_loss']) for h in json.load(f) if 'val_loss' in h]


def loss_at(curve, t):
    """Val loss at training second t, linear between evaluations (nan outside the curve)."""
    ts, ls = zip(*curve)
    return float(np.interp(t, ts, ls, left=np.nan, right=np.nan))


def time_to(curve, target):
    """First training second at which the val loss reaches target, linear between evaluations."""
    prev = (0.0, float('inf'))
    for t, loss in curve:
        if loss <= target:
            if not np.isfinite(prev[1]):
                return t
            return prev[0] + (t - prev[0]) * (prev[1] - target) / (prev[1] - loss)
        prev = (t, loss)
    return float('nan')


def bench_quality(configs, data_dir, device, seed, eval_interval, recipe, optimizer):
    """Old vs new recipe (the config's recipe and optimizer) through pretrain.py itself: same data,
    seed and evaluation batches, a val loss every eval_interval iterations."""
    runs = {'old (gpt2 + adamw, cosine)': [f'--{k}={v}' for k, v in OLD_RECIPE.items()],
            f'new ({recipe} + {optimizer}, config)': []}
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, args) in enumerate(runs.items()):
            out = os.path.join(tmp, str(i))
            cmd = [sys.executable, 'pretrain.py', *configs, f'--data_dir={data_dir}', f'--out_dir={out}',
                   f'--eval_interval={eval_interval}', '--progress=False', '--init_from=scratch',
                   f'--device={device}', f'--seed={seed}', *args]
            print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
            r = subprocess.run(cmd, cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or [''])[-1]
                raise UserError(f"pretrain.py failed for the {name} recipe: {last}")
            curves[name] = val_curve(out)
    (old_name, old), (new_name, new) = curves.items()
    target, t_old, t_new = old[-1][1], old[-1][0], new[-1][0]
    t_eq = min(t_old, t_new)
    print(f"\nval loss on the plain stream of {data_dir}, one run, this machine:")
    for name, c in curves.items():
        print(f"  {name:34s} {c[-1][0]:6.1f} s of training, final val loss {c[-1][1]:.4f}; at {t_eq:.0f} s: "
              f"{loss_at(c, t_eq):.4f}; reaches the old final {target:.4f} after {time_to(c, target):.1f} s")
    print(f"  the new recipe needs {time_to(new, target) / t_old:.0%} of the old recipe's time to reach the old "
          f"recipe's final val loss")


def main():
    check_model_config(config)
    check_config(config, positive=('batch_size', 'vocab_size', 'steps', 'sample_batch', 'new_tokens', 'prompt_tokens',
                                   'quality_eval_interval'), nonneg=('warmup_steps', 'cpu_peak_flops', 'threads'),
                 choices=dict(what=('train', 'sample', 'quality', 'sft'), optimizer=('muon', 'adamw'), dtype=DTYPES))
    check_device(device)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    env = setup_device(device)
    configs = [a for a in sys.argv[1:] if not a.startswith('--')]
    if what == 'quality':
        return bench_quality(configs, data_dir, device, seed, quality_eval_interval, recipe, optimizer)
    if what == 'sample' and prompt_tokens + new_tokens > block_size:
        raise UserError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds block_size={block_size}")
    make = lambda r, vocab=vocab_size: GPT(GPTConfig(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab, recipe=r,
        tie_embeddings=tie_embeddings, dropout=dropout)).to(env['device'])
    timing = Timing(dtype, warmup_steps, steps)
    if what == 'sft':
        return bench_sft(partial(make, recipe), optimizer, env, configs, data_dir, block_size, timing, seed)
    if what == 'sample':
        return bench_sample(make(recipe), env, dtype, sample_batch, new_tokens, prompt_tokens)
    new, old = (recipe, optimizer), ('gpt2', 'adamw')
    tps = {}
    for _ in range(2):  # alternate, keep each one's best: a shared machine only ever slows a run down
        for r, o in dict.fromkeys((new, old)):  # once if the config is the old recipe itself
            torch.manual_seed(seed)
            tps[r, o] = max(tps.get((r, o), 0),
                            bench_train(make(r), env, o, batch_size, timing, compile, cpu_peak_flops))
    print(f"tokens/s, best of 2: {new[0]} + {new[1]} {tps[new]:,.0f}, gpt2 + adamw {tps[old]:,.0f}: "
          f"ratio {tps[new] / tps[old]:.2f}x")


if __name__ == '__main__':
    main_guard(main)
