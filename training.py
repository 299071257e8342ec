"""
The training loop shared by pretrain.py and anchor_sft.py: device and DDP setup, cosine learning
rate, gradient accumulation across ranks, evaluation, logging with MFU, tqdm progress, and atomic
resumable checkpoints. The two stages differ only in their data (a token stream vs masked SFT
rows), which they hand in as `get_batch`.

Determinism: every rank draws the batch indices of *all* ranks from one generator with the same
seed and materializes only its own share, so 2 ranks x accumulation k see exactly the batches of
1 rank x accumulation 2k, and a resumed run (the generator's state is in the checkpoint) sees
exactly the batches of an uninterrupted one.
"""
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from common import UserError, atomic_write, write_json
from model import GPT, GPTConfig

# peak dense FLOP/s per device for MFU (bf16 tensor cores on GPUs); CPU: the user gives it
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10': 125e12}


def setup_device(device='auto', backend='auto'):
    """Single process, or DDP under torchrun (RANK in the environment): nccl on CUDA, gloo on CPU."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available")
    ddp = int(os.environ.get('RANK', -1)) != -1
    rank, local_rank, world = 0, 0, 1
    if ddp:
        if backend == 'auto':
            backend = 'nccl' if device.startswith('cuda') else 'gloo'
        dist.init_process_group(backend=backend)
        rank, local_rank, world = dist.get_rank(), int(os.environ['LOCAL_RANK']), dist.get_world_size()
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
    return dict(ddp=ddp, rank=rank, world=world, master=rank == 0, device=device,
                device_type='cuda' if device.startswith('cuda') else 'cpu')


def autocast(device_type, dtype='auto'):
    """bf16 autocast on CUDA (where supported); plain fp32 on CPU, where bf16 matmuls are slower."""
    if dtype == 'auto':
        dtype = 'bfloat16' if device_type == 'cuda' and torch.cuda.is_bf16_supported() else 'float32'
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


def cosine_lr(it, lr, min_lr, warmup_iters, decay_iters):
    """Linear warmup, then cosine decay to min_lr at decay_iters, then flat (nanoGPT)."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


# -----------------------------------------------------------------------------
# checkpoints

def save_checkpoint(path, ckpt):
    """torch.save to a temp file, then rename: a kill mid-write never leaves a broken ckpt.pt."""
    atomic_write(path, lambda f: torch.save(ckpt, f), mode='wb')


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
                    cuda_rng=None)
    keys = ('iter_num', 'best_val_loss', 'history', 'data_rng', 'torch_rng', 'cuda_rng')
    return {k: ckpt.get(k) for k in keys}


def padded_vocab(meta):
    """Round the vocabulary up to a multiple of 64: faster matmuls (nanoGPT's 50304 trick)."""
    return (meta['vocab_size'] + 63) // 64 * 64


# -----------------------------------------------------------------------------
# the loop

def train(model, optimizer, get_batch, cfg, env, state, ckpt_extra):
    """Train `model` until cfg['max_iters'].

    get_batch(split, gen, micro_ids) -> list of (x, y) for the micro-batch numbers in micro_ids, out
    of world * grad_accum drawn from gen for this iteration. cfg: the stage's config in
    pretrain.py's names (anchor_sft.py maps its sft_* keys). state: resume_state() of a fresh start
    or a checkpoint. ckpt_extra: what else goes into every checkpoint (model args, config, meta).
    """
    device, device_type, master = env['device'], env['device_type'], env['master']
    world, rank = env['world'], env['rank']
    accum = cfg['gradient_accumulation_steps']
    if accum % world:
        raise UserError(f"gradient_accumulation_steps={accum} must be divisible by the {world} ranks")
    accum //= world  # each rank does its share of the micro-batches of one iteration
    my_micro = list(range(rank * accum, (rank + 1) * accum))
    ctx = autocast(device_type, cfg['dtype'])
    raw = model
    if cfg['compile']:
        model = torch.compile(model)
    if env['ddp']:
        model = DDP(model, device_ids=[int(device.split(':')[1])] if device_type == 'cuda' else None)
    gen = torch.Generator().manual_seed(cfg['seed'])
    if state['data_rng'] is not None:
        gen.set_state(state['data_rng'])
        torch.set_rng_state(state['torch_rng'])
        if device_type == 'cuda' and state['cuda_rng'] is not None:
            torch.cuda.set_rng_state_all(state['cuda_rng'])
    flops = peak_flops(device_type, cfg['cpu_peak_flops'])
    ckpt_path = os.path.join(cfg['out_dir'], 'ckpt.pt')

    @torch.no_grad()
    def evaluate():
        """Mean loss over eval_iters batches drawn from a fixed seed: comparable across runs."""
        model.eval()
        out = {}
        for split in ('train', 'val'):
            eg = torch.Generator().manual_seed(1234)
            losses = []
            for _ in range(cfg['eval_iters']):
                x, y = get_batch(split, eg, [0])[0]
                with ctx:
                    losses.append(raw(x, y)[1].item())
            out[split] = sum(losses) / len(losses)
        model.train()
        return out

    def checkpoint():
        ckpt = dict(ckpt_extra, model=raw.state_dict(), optimizer=optimizer.state_dict(),
                    iter_num=state['iter_num'], best_val_loss=state['best_val_loss'],
                    history=state['history'], data_rng=gen.get_state(),
                    torch_rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if device_type == 'cuda' else None)
        save_checkpoint(ckpt_path, ckpt)
        write_json(os.path.join(cfg['out_dir'], 'log.json'), state['history'])

    model.train()
    it = state['iter_num']
    bar = tqdm(total=cfg['max_iters'], initial=it, disable=not master or not cfg['progress'],
               desc=cfg.get('desc', 'train'), dynamic_ncols=True)
    t0 = t_start = time.time()
    while it < cfg['max_iters']:
        lr = cosine_lr(it, cfg['learning_rate'], cfg['min_lr'], cfg['warmup_iters'], cfg['lr_decay_iters'])
        for group in optimizer.param_groups:
            group['lr'] = lr
        batches = get_batch('train', gen, my_micro)
        loss_sum = torch.zeros((), device=device)
        tokens_per_iter = sum(x.numel() for x, _ in batches) * world  # SFT rows vary in length
        for i, (x, y) in enumerate(batches):
            if env['ddp']:  # sync gradients only on the last micro-step
                model.require_backward_grad_sync = i == accum - 1
            with ctx:
                _, loss = model(x, y)
                loss = loss / accum
            loss.backward()
            loss_sum += loss.detach()
        if cfg['grad_clip'] > 0:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg['grad_clip'])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if env['ddp']:  # the logged loss is the mean over all ranks' micro-batches
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        it += 1
        state['iter_num'] = it
        bar.update(1)
        if not master:
            continue
        loss_val = loss_sum.item()  # a sync point: dt below is a real step time
        dt = time.time() - t0
        t0 = time.time()
        entry = {'iter': it, 'loss': loss_val, 'lr': lr}
        bar.set_postfix(loss=f"{loss_val:.3f}")
        if it % cfg['log_interval'] == 0 or it == cfg['max_iters']:
            mfu = raw.estimate_mfu(tokens_per_iter, dt, flops) if flops else None
            bar.write(f"iter {it}: loss {loss_val:.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms/iter, "
                      f"{tokens_per_iter / dt:,.0f} tok/s" + (f", mfu {mfu * 100:.1f}%" if mfu else ''))
        if it % cfg['eval_interval'] == 0 or it == cfg['max_iters']:
            losses = evaluate()
            entry.update(train_loss=losses['train'], val_loss=losses['val'])
            bar.write(f"iter {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            state['best_val_loss'] = min(state['best_val_loss'], losses['val'])
            state['history'].append(entry)
            checkpoint()
            t0 = time.time()  # evaluation and saving are not step time
        else:
            state['history'].append(entry)
    bar.close()
    if master:
        val = [h['val_loss'] for h in state['history'] if 'val_loss' in h][-1:]
        print(f"done: {it} iters in {time.time() - t_start:.0f}s"
              + (f", val loss {val[0]:.4f}" if val else '') + f" -> {ckpt_path}")
    if env['ddp']:
        dist.barrier()
    return state
