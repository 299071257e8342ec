"""
Benchmarks, nanoGPT's bench.py idea: time one thing of model.py without the data pipeline.

    python bench.py config/small.py                         # pretraining step: ms/iter, tok/s, MFU
    python bench.py config/gpt2_small.py --compile=True     # on a GPU: bf16, fused AdamW, flash SDPA
    python bench.py config/small.py --what=sample           # batched KV-cache sampling vs naive loop

what='train': forward, backward and AdamW step on random tokens; warm-up steps are excluded.
what='sample': tokens/s of generating `new_tokens` for `sample_batch` sequences at once with the KV
cache, against the naive loop that re-runs the whole context for every token, one sequence at a
time; same model, same length, one run.
"""
import time

import torch

from common import UserError, main_guard
from model import GPT, GPTConfig
from training import autocast, peak_flops, setup_device

# -----------------------------------------------------------------------------
what = 'train'  # 'train' or 'sample'
batch_size = 16
block_size = 256
vocab_size = 4096
n_layer = 4
n_head = 4
n_embd = 256
bias = False
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
seed = 1337
threads = 0
from configurator import configure  # noqa: E402
config = configure(globals())
# -----------------------------------------------------------------------------


def sync(device_type):
    if device_type == 'cuda':
        torch.cuda.synchronize()


def bench_train(model, env):
    ctx = autocast(env['device_type'], dtype)
    opt = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), env['device_type'])
    step_model = torch.compile(model) if compile else model
    x = torch.randint(vocab_size, (batch_size, block_size), device=env['device'])
    y = torch.randint(vocab_size, (batch_size, block_size), device=env['device'])
    for i in range(warmup_steps + steps):
        if i == warmup_steps:
            sync(env['device_type'])
            t0 = time.time()
        with ctx:
            _, loss = step_model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(env['device_type'])
    dt = (time.time() - t0) / steps
    tokens = batch_size * block_size
    flops = peak_flops(env['device_type'], cpu_peak_flops)
    mfu = f"{model.estimate_mfu(tokens, dt, flops) * 100:.1f}%" if flops else 'n/a (give --cpu_peak_flops)'
    name = torch.cuda.get_device_name() if env['device_type'] == 'cuda' else 'cpu'
    achieved = model.flops_per_token() * tokens / dt  # model FLOP/s, whatever the device's peak
    print(f"train step on {name} ({dtype}, compile={compile}): {model.num_params() / 1e6:.2f}M params, "
          f"batch {batch_size}x{block_size}: {dt * 1000:.1f} ms/iter, {tokens / dt:,.0f} tokens/s, "
          f"{achieved / 1e9:,.1f} GFLOP/s, MFU {mfu}")


def bench_sample(model, env):
    model.eval()
    ctx = autocast(env['device_type'], dtype)
    prompt = torch.randint(vocab_size, (1, prompt_tokens), device=env['device'])

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


def main():
    if what not in ('train', 'sample'):
        raise UserError(f"what must be 'train' or 'sample', got '{what}'")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    env = setup_device(device)
    if what == 'sample' and prompt_tokens + new_tokens > block_size:
        raise UserError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds block_size={block_size}")
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                          vocab_size=vocab_size, bias=bias, dropout=dropout)).to(env['device'])
    (bench_train if what == 'train' else bench_sample)(model, env)


if __name__ == '__main__':
    main_guard(main)
