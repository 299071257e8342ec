"""
The training loop shared by pretrain.py and anchor_sft.py: device and DDP setup, the learning-rate
schedule, gradient accumulation across ranks, evaluation, logging with MFU, tqdm progress, and
atomic resumable checkpoints. The two stages differ in their data (a token stream vs masked SFT
rows), which they hand in as `get_batch`, and anchored SFT adds a term to the loss (`loss_fn`).

Determinism: every rank draws the batch indices of *all* ranks from one generator with the same
seed and materializes only its own share, so 2 ranks x accumulation k see exactly the batches of
1 rank x accumulation 2k, and a resumed run (the generator's state is in the checkpoint) sees
exactly the batches of an uninterrupted one.
"""
import math
import os
import shutil
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from common import (UserError, atomic_write, check_config, check_device, check_out_dir, clean_stale_temps,
                    die_with_parent, write_json)
from formats import IGNORE
from model import GPT, RECIPES, GPTConfig

# peak dense FLOP/s per device for MFU (bf16 tensor cores on GPUs); CPU: the user gives it
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10': 125e12}


DTYPES = ('auto', 'float32', 'bfloat16', 'float16')


def check_training_config(cfg, positive=(), nonneg=(), fractions=(), choices=None, dropout_key='dropout'):
    """The checks every training stage shares (pretrain.py, anchor_sft.py), plus the stage's own;
    and its out_dir must be writable. Run before any work."""
    check_config(cfg, positive=('gradient_accumulation_steps', 'log_interval') + tuple(positive),
                 nonneg=('weight_decay', 'grad_clip', 'threads', 'cpu_peak_flops') + tuple(nonneg),
                 fractions=(dropout_key, 'beta1', 'beta2') + tuple(fractions),
                 choices=dict(dtype=DTYPES, backend=('auto', 'nccl', 'gloo'), **(choices or {})))
    if cfg[dropout_key] >= 1:
        raise UserError(f"{dropout_key} must be < 1, got {cfg[dropout_key]}")
    world = int(os.environ.get('WORLD_SIZE', 1))  # set by torchrun
    if cfg['gradient_accumulation_steps'] % world:
        raise UserError(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be divisible by "
                        f"the {world} ranks")
    check_device(cfg['device'])
    check_out_dir(cfg['out_dir'], 'out_dir')
    clean_stale_temps(cfg['out_dir'], ('ckpt.pt', 'best.pt', 'log.json'))  # a kill mid-write leaves a full-size temp


def check_model_config(cfg):
    """The model's own rules: heads divide the width, and rotary rotates pairs of channels."""
    check_config(cfg, positive=('n_layer', 'n_head', 'n_embd', 'block_size'), choices=dict(recipe=RECIPES))
    if cfg['n_embd'] % cfg['n_head']:
        raise UserError(f"n_embd={cfg['n_embd']} is not divisible by n_head={cfg['n_head']}")
    if cfg['recipe'] == 'modern' and (cfg['n_embd'] // cfg['n_head']) % 2:
        raise UserError(f"head size n_embd/n_head={cfg['n_embd'] // cfg['n_head']} must be even for rotary embeddings")


def setup_device(device='auto', backend='auto'):
    """Single process, or DDP under torchrun (RANK in the environment): nccl on CUDA, gloo on CPU."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available")
    ddp = int(os.environ.get('RANK', -1)) != -1
    rank, local_rank, world = 0, 0, 1
    if ddp:
        die_with_parent()  # torchrun starts its workers in sessions of their own: none outlives it
        if backend == 'auto':
            backend = 'nccl' if device.startswith('cuda') else 'gloo'
        dist.init_process_group(backend=backend)
        rank, local_rank, world = dist.get_rank(), int(os.environ['LOCAL_RANK']), dist.get_world_size()
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
    return dict(ddp=ddp, rank=rank, world=world, master=rank == 0, device=device,
                device_type='cuda' if device.startswith('cuda') else 'cpu')


def native_bf16(device_type):
    """Whether this device multiplies bf16 matrices natively: CUDA with bf16, or a CPU with
    AVX512-BF16 or AMX (through oneDNN)."""
    if device_type == 'cuda':
        return torch.cuda.is_bf16_supported()
    try:
        return device_type == 'cpu' and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(device_type, dtype='auto', training=True):
    """'auto' is bf16 where bf16 matmuls are native: always on CUDA, and on such a CPU for training
    only (measured on the laptop model: 1.4x the fp32 training step, the same val loss to 3 decimals;
    generation's one-token matmuls run faster in fp32). Elsewhere fp32: where bf16 is emulated it is
    slower. A training run is therefore repeatable on one machine, not across CPUs of two kinds."""
    if dtype != 'auto':
        return dtype
    return 'bfloat16' if native_bf16(device_type) and (training or device_type == 'cuda') else 'float32'


def autocast(device_type, dtype='auto', training=True):
    """The autocast context of resolve_dtype (fp32: none)."""
    dtype = resolve_dtype(device_type, dtype, training)
    if dtype == 'float32':
        return nullcontext()
    if dtype not in ('bfloat16', 'float16'):
        raise UserError(f"dtype must be auto, float32, bfloat16 or float16, got '{dtype}'")
    return torch.amp.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def peak_flops(device_type, cpu_peak_flops):
    """Peak FLOP/s of this device from the table, or the user's figure on CPU (0: MFU not shown)."""
    if device_type == 'cuda':
        name = torch.cuda.get_device_name()
        for key, flops in PEAK_FLOPS.items():
            if key in name:
                return flops
        return 0.0
    return cpu_peak_flops


SCHEDULES = ('wsd', 'cosine')


def lr_multiplier(it, max_iters, warmup_iters, schedule, warmdown_frac, final_lr_frac):
    """The factor on every group's base learning rate at iteration it: linear warmup, then
    'cosine': cosine decay to final_lr_frac at max_iters (nanoGPT);
    'wsd' (warmup-stable-decay): constant, then a linear warmdown to final_lr_frac over the last
    warmdown_frac of the run (nanochat, modded-nanogpt)."""
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    if schedule == 'cosine':
        ratio = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
        return final_lr_frac + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1.0 - final_lr_frac)
    left = (max_iters - it) / max(1, round(warmdown_frac * max_iters))  # 1 at the warmdown's start
    return 1.0 if left >= 1 else final_lr_frac + max(0.0, left) * (1.0 - final_lr_frac)


# -----------------------------------------------------------------------------
# checkpoints

def save_checkpoint(path, ckpt):
    """torch.save to a temp file, then rename: a kill mid-write never leaves a broken ckpt.pt, and a
    write that fails (a full disk) ends in one line, the previous checkpoint kept as it was."""
    try:
        atomic_write(path, lambda f: torch.save(ckpt, f), mode='wb')
    except (OSError, RuntimeError) as e:  # torch.save reports a short write as a RuntimeError
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"writing {path} failed ({reason}): is the disk full? The previous checkpoint is kept; "
                        f"free space and rerun with --init_from=resume")


def model_path(run_dir):
    """The checkpoint a run's model is used from: best.pt where the run kept its lowest-val-loss
    state (SFT), else ckpt.pt."""
    best = os.path.join(run_dir, 'best.pt')
    return best if os.path.isfile(best) else os.path.join(run_dir, 'ckpt.pt')


def load_checkpoint(path, device='cpu'):
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__})")


def check_meta(ckpt, meta, data_dir):
    """A checkpoint only makes sense with the tokenizer and token format it was trained on."""
    if ckpt.get('meta_fingerprint') != meta['fingerprint']:
        raise UserError(f"data dir {data_dir} (tokenizer/format {meta['fingerprint']}) does not match "
                        f"the checkpoint's ({ckpt.get('meta_fingerprint')}); use the data dir it was trained on")


def load_frozen_pretrained(run_dir, device, fingerprint, what, annotated=True):
    """The frozen pretrained model of run_dir. Annotated: the prior R(z) that anchored SFT means to
    keep (prior distillation's teacher), and that sample.py can draw annotations from; plain: the
    teacher of the control's counterpart of prior distillation."""
    ckpt = load_checkpoint(os.path.join(run_dir, 'ckpt.pt'), device)
    if ckpt.get('stage') != 'pretrain' or bool(ckpt.get('annotated')) != annotated:
        raise UserError(f"{what}={run_dir} is not {'an annotated' if annotated else 'a plain'} pretrained checkpoint")
    if ckpt.get('meta_fingerprint') != fingerprint:
        raise UserError(f"{what}={run_dir} was trained on another tokenizer/format")
    model = model_from_checkpoint(ckpt, device).eval()
    model.requires_grad_(False)
    return model


def elastic_restart(out_dir):
    """Whether this process is a restart by torchrun (--max-restarts) of a group that already wrote a
    checkpoint: it then continues from that checkpoint, not from its start. The checkpoint must carry
    this torchrun's run id, so that another run's checkpoint in out_dir is never trained on."""
    if int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')) == 0:
        return False
    path = os.path.join(out_dir, 'ckpt.pt')
    return os.path.isfile(path) and load_checkpoint(path).get('run_id') == os.environ.get('TORCHELASTIC_RUN_ID')


def model_from_checkpoint(ckpt, device):
    model = GPT(GPTConfig(**ckpt['model_args']))
    # checkpoints of compiled models carry a prefix on every key
    state = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    model.load_state_dict(state)
    return model.to(device)


def resume_state(ckpt):
    """The loop state of a fresh run (ckpt None) or of a checkpoint to resume, RNG states included,
    so that a resumed run draws the same batches and dropout masks as an uninterrupted one."""
    if ckpt is None:
        return dict(iter_num=0, best_val_loss=float('inf'), history=[], data_rng=None, torch_rng=None,
                    cuda_rng=None, train_time=0.0)
    keys = ('iter_num', 'best_val_loss', 'history', 'data_rng', 'torch_rng', 'cuda_rng')
    return dict({k: ckpt.get(k) for k in keys}, train_time=ckpt.get('train_time') or 0.0)


def padded_vocab(meta):
    """Round the vocabulary up to a multiple of 64: faster matmuls (nanoGPT's 50304 trick)."""
    return (meta['vocab_size'] + 63) // 64 * 64


# -----------------------------------------------------------------------------
# the loop

def lm_loss(model, batch, targets_only=False):
    """The plain language-model loss of a batch (x, y, ...): what pretraining and SFT minimize
    (SFT: targets_only, the head run only where there is a target; model.py says why)."""
    return model(batch[0], batch[1], targets_only=targets_only)[1]


def sampled_evals(get_batch, splits, iters):
    """Evaluation batches of a token stream: `iters` batches per split, drawn from one fixed seed,
    so that every evaluation (and every run) reads the same windows."""
    def batches(split):
        gen = torch.Generator().manual_seed(1234)
        return [get_batch(split, gen, [0])[0] for _ in range(iters)]
    return {split: (lambda s=split: batches(s)) for split in splits}


@torch.no_grad()
def evaluate(model, evals, ctx):
    """Mean loss per target token over each split's evaluation batches (evals: {split: () ->
    batches}); a batch's own mean loss is weighted by its number of targets, so that a set of rows of
    different lengths gives the loss of the whole set."""
    model.eval()
    out = {}
    for split, batches in evals.items():
        total, count = 0.0, 0
        for batch in batches():
            n = int((batch[1] != IGNORE).sum())
            with ctx:
                total += lm_loss(model, batch).item() * n
            count += n
        out[split] = total / max(count, 1)
    model.train()
    return out


def evals_since_best(history, min_delta=0.0):
    """Evaluations since the last improvement, an improvement being a val loss below every earlier
    one by more than min_delta (so that a flat curve's wiggles in the third decimal are not one)."""
    best, since = float('inf'), 0
    for h in history:
        if 'val_loss' in h:
            best, since = (h['val_loss'], 0) if h['val_loss'] < best - min_delta else (best, since + 1)
    return since


def compile_works(device_type):
    """torch.compile on a CPU needs a C++ compiler (inductor writes C++ kernels)."""
    return device_type != 'cpu' or any(shutil.which(c) for c in ('g++', 'c++', 'clang++'))


def wrap_model(model, env, compile):
    """The model the steps run through: compiled where that works, inside DDP under torchrun."""
    if compile and not compile_works(env['device_type']):
        if env['master']:
            print("compile=True, but no C++ compiler was found for torch.compile on the CPU: running eager")
        compile = False
    if compile:
        model = torch.compile(model)
    if env['ddp']:
        ids = [int(env['device'].split(':')[1])] if env['device_type'] == 'cuda' else None
        model = DDP(model, device_ids=ids)
    return model


def rank_rng_states(env):
    """torch's random state (dropout) of every rank, on every rank: under DDP each rank draws its own
    stream (seed + rank), so a checkpoint must hold all of them for a resumed run to draw the same
    dropout masks on every rank."""
    mine = (torch.get_rng_state(), torch.cuda.get_rng_state() if env['device_type'] == 'cuda' else None)
    if not env['ddp']:
        return [mine]
    states = [None] * env['world']
    dist.all_gather_object(states, mine)
    return states


def restore_rng(state, gen, env):
    """A resumed run continues the data sampler's and each rank's torch random streams where they
    stopped (a checkpoint of another number of ranks: the first rank's)."""
    if state['data_rng'] is not None:
        gen.set_state(state['data_rng'])
        torch_rng, cuda_rng = state['torch_rng'], state['cuda_rng']
        if isinstance(torch_rng, list):  # one per rank
            torch_rng, cuda_rng = torch_rng[env['rank'] if env['rank'] < len(torch_rng) else 0]
        torch.set_rng_state(torch_rng)
        if env['device_type'] == 'cuda' and isinstance(cuda_rng, list):  # (older checkpoints: every device's)
            torch.cuda.set_rng_state_all(cuda_rng)
        elif env['device_type'] == 'cuda' and cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)


def train_step(model, raw, optimizer, batches, loss_fn, ctx, grad_clip, ddp):
    """Forward and backward of this rank's micro-batches, one optimizer step; the mean loss."""
    loss_sum = torch.zeros((), device=batches[0][0].device)
    for i, batch in enumerate(batches):
        if ddp:  # sync gradients only on the last micro-step
            model.require_backward_grad_sync = i == len(batches) - 1
        with ctx:
            loss = loss_fn(model, batch) / len(batches)
        loss.backward()
        loss_sum += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ddp:  # the logged loss is the mean over all ranks' micro-batches
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    return loss_sum


def save_run(out_dir, raw, optimizer, state, gen, ckpt_extra, rng_states, best):
    """log.json, then best.pt (if best), then ckpt.pt: a kill between two writes leaves a log that is
    ahead of ckpt.pt (a resume rewrites it from ckpt.pt) and a ckpt.pt that redoes this evaluation."""
    ckpt = dict(ckpt_extra, model=raw.state_dict(), optimizer=optimizer.state_dict(),
                iter_num=state['iter_num'], best_val_loss=state['best_val_loss'],
                history=state['history'], data_rng=gen.get_state(),
                torch_rng=rng_states, cuda_rng=None, train_time=state['train_time'],
                run_id=os.environ.get('TORCHELASTIC_RUN_ID'))  # (elastic_restart: whose checkpoint)
    try:
        write_json(os.path.join(out_dir, 'log.json'), state['history'])
    except OSError as e:
        raise UserError(f"writing {out_dir}/log.json failed ({e.strerror}): is the disk full? "
                        f"The previous checkpoint is kept")
    if best:
        save_checkpoint(os.path.join(out_dir, 'best.pt'), ckpt)
    save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), ckpt)


def should_stop(state, patience, min_delta, env):
    """Early stopping, decided on the first rank and shared with the others."""
    stop = torch.tensor([float(env['master'] and evals_since_best(state['history'], min_delta) >= patience)],
                        device=env['device'])
    if env['ddp']:
        dist.broadcast(stop, 0)
    return bool(stop.item())


def prepare_out_dir(out_dir, state, master):
    """A fresh run removes another run's best.pt; a resumed one rewrites log.json from its checkpoint
    (a kill between two writes can leave the log ahead of ckpt.pt)."""
    if master and state['iter_num'] == 0 and os.path.exists(os.path.join(out_dir, 'best.pt')):
        os.remove(os.path.join(out_dir, 'best.pt'))
    if master and state['iter_num'] > 0:
        write_json(os.path.join(out_dir, 'log.json'), state['history'])


def log_step(bar, it, loss, lrm, dt, tokens, mfu):
    bar.write(f"iter {it}: loss {loss:.4f}, lr x{lrm:.3f}, {dt * 1000:.0f} ms/iter, {tokens / dt:,.0f} tok/s"
              + (f", mfu {mfu * 100:.1f}%" if mfu else ''))


def eval_step(raw, evals, ctx, state, entry, bar, min_delta):
    """Evaluate, record the losses in the log entry; whether the val loss improved by more than
    min_delta (then it becomes the best)."""
    losses = evaluate(raw, evals, ctx)
    entry.update({f'{k}_loss': v for k, v in losses.items()})
    bar.write(f"iter {entry['iter']}: " + ', '.join(f"{k} loss {v:.4f}" for k, v in losses.items()))
    best = losses['val'] < state['best_val_loss'] - min_delta
    if best:
        state['best_val_loss'] = losses['val']
    return best


def train(model, optimizer, get_batch, evals, env, state, ckpt_extra, *, out_dir, max_iters, lr_at,
          eval_interval, log_interval=10, accum=1, grad_clip=1.0, seed=1337, dtype='auto', compile=False,
          peak_flops=0.0, progress=True, loss_fn=lm_loss, keep_best=False, patience=0, min_delta=0.0,
          desc='train', ckpt_interval=0):
    """Train `model` until max_iters (or early stopping); returns the loop state.

    get_batch(split, gen, micro_ids) -> the batches (x, y, ...) of the micro-batch numbers micro_ids,
    out of world * accum drawn from gen for this iteration. evals: {split: () -> batches}, the fixed
    batches every evaluation reads. lr_at(it): the factor on every group's base learning rate.
    loss_fn(model, batch): the training loss (evaluation always reports lm_loss, comparable across
    methods). state: resume_state() of a fresh start or of a checkpoint. ckpt_extra: what else goes
    into every checkpoint. keep_best: also keep the checkpoint of the lowest val loss as best.pt;
    patience > 0: stop after that many evaluations without a val loss lower by more than min_delta.
    ckpt_interval > 0: also write ckpt.pt every that many iterations between evaluations (an
    interrupted run then loses at most that many iterations; an evaluation costs more than a write).
    """
    master, world = env['master'], env['world']
    accum //= world  # each rank does its share (check_training_config: accum divides by the ranks)
    my_micro = list(range(env['rank'] * accum, (env['rank'] + 1) * accum))
    ctx = autocast(env['device_type'], dtype)
    raw, model = model, wrap_model(model, env, compile)
    gen = torch.Generator().manual_seed(seed)
    restore_rng(state, gen, env)
    prepare_out_dir(out_dir, state, master)
    model.train()
    it = state['iter_num']
    bar = tqdm(total=max_iters, initial=it, disable=not master or not progress, desc=desc, dynamic_ncols=True)
    t0 = t_start = time.time()
    while it < max_iters and not (patience and evals_since_best(state['history'], min_delta) >= patience):
        lrm = lr_at(it)
        for group in optimizer.param_groups:
            group['lr'] = group['base_lr'] * lrm
        batches = get_batch('train', gen, my_micro)
        tokens_per_iter = sum(b[0].numel() for b in batches) * world  # SFT rows vary in length
        loss = train_step(model, raw, optimizer, batches, loss_fn, ctx, grad_clip, env['ddp'])
        it = state['iter_num'] = it + 1
        bar.update(1)
        is_eval = it % eval_interval == 0 or it == max_iters
        is_ckpt = is_eval or (ckpt_interval and it % ckpt_interval == 0)
        rng_states = rank_rng_states(env) if is_ckpt else None  # (a collective: every rank, before the first saves)
        if master:
            loss_val, dt = loss.item(), time.time() - t0  # .item() syncs: dt is a real step time
            state['train_time'] += dt
            entry = {'iter': it, 'loss': loss_val, 'lr_mult': lrm, 'time': round(state['train_time'], 3)}
            bar.set_postfix(loss=f"{loss_val:.3f}")
            if it % log_interval == 0 or it == max_iters:
                log_step(bar, it, loss_val, lrm, dt, tokens_per_iter,
                         raw.estimate_mfu(tokens_per_iter, dt, peak_flops) if peak_flops else None)
            best = is_eval and eval_step(raw, evals, ctx, state, entry, bar, min_delta)
            state['history'].append(entry)
            if is_ckpt:
                save_run(out_dir, raw, optimizer, state, gen, ckpt_extra, rng_states, best and keep_best)
            t0 = time.time()  # evaluation and saving are not step time
        if is_eval and patience and should_stop(state, patience, min_delta, env):  # every rank stops with the first
            if master:
                bar.write(f"iter {it}: no val loss lower by more than {min_delta} in {patience} evaluations, stopping")
            break
    bar.close()
    if master:
        val = [h['val_loss'] for h in state['history'] if 'val_loss' in h][-1:]
        print(f"done: {it} iters in {time.time() - t_start:.0f}s"
              + (f", val loss {val[0]:.4f}" if val else '') + f" -> {os.path.join(out_dir, 'ckpt.pt')}")
    if env['ddp']:
        dist.barrier()
    return state
