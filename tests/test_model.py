"""model.py: loss masking, KV-cache generation equals full recomputation, batching, optimizer groups."""
import torch

from model import GPT, GPTConfig, IGNORE_INDEX


def tiny(block_size=48, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=97, n_layer=2, n_head=2, n_embd=32)).eval()


def test_loss_ignores_masked_targets():
    m = tiny()
    x = torch.randint(97, (2, 10))
    y = torch.randint(97, (2, 10))
    logits, full = m(x, y)
    y_masked = y.clone()
    y_masked[:, :5] = IGNORE_INDEX
    _, part = m(x, y_masked)
    expect = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 97), y[:, 5:].reshape(-1))
    assert torch.allclose(part, expect, atol=1e-5)
    assert not torch.allclose(part, full)


def test_kv_cache_greedy_matches_no_cache():
    m = tiny()
    idx = torch.randint(97, (3, 7))
    a, _ = m.generate(idx, 30, temperature=0)
    b, _ = m.generate(idx, 30, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_kv_cache_prefill_logits_match():
    from model import KVCache
    m = tiny()
    idx = torch.randint(97, (2, 12))
    cache = KVCache(m.config, 2, 12, 'cpu', torch.float32)
    m(idx[:, :5], cache=cache)  # chunked prefill, then one token at a time
    for t in range(5, 12):
        step, _ = m(idx[:, t:t + 1], cache=cache)
        full, _ = m(idx[:, :t + 1])
        assert torch.allclose(step, full, atol=1e-5)


def test_sampling_with_cache_matches_without_for_same_seed():
    m = tiny()
    idx = torch.randint(97, (4, 3))
    a, _ = m.generate(idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b, _ = m.generate(idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(5), use_cache=False)
    assert torch.equal(a, b)


def test_batched_greedy_matches_one_at_a_time():
    m = tiny()
    idx = torch.randint(97, (1, 6)).repeat(5, 1)
    idx[:, -1] = torch.arange(5)  # different prompts of the same length
    batched, _ = m.generate(idx, 25, temperature=0)
    for i in range(5):
        single, _ = m.generate(idx[i:i + 1], 25, temperature=0)
        assert torch.equal(batched[i], single[0])


def test_stop_ids_and_phase_temperature():
    m = tiny()
    idx = torch.randint(97, (8, 4))
    new, done = m.generate(idx, 40, temperature=1.0, stop_ids=[3, 4, 5, 6, 7, 8, 9, 10],
                           generator=torch.Generator().manual_seed(0), vocab_limit=90)
    assert new.max() < 90
    for row, d in zip(new.tolist(), done.tolist()):
        stops = [i for i, t in enumerate(row) if 3 <= t <= 10]
        assert d == bool(stops)
        if stops:  # after the stop, only padding with the first stop id
            assert all(t == 3 for t in row[stops[0] + 1:])
    # greedy first phase, then a switch at the phase id: rows that never see it stay greedy
    a, _ = m.generate(idx, 10, temperature=0, phase_id=96, phase_temperature=0.0)
    b, _ = m.generate(idx, 10, temperature=0)
    assert torch.equal(a, b)


def test_generate_respects_block_size():
    m = tiny(block_size=16)
    new, _ = m.generate(torch.zeros(2, 10, dtype=torch.long), 50, temperature=0)
    assert new.shape == (2, 6)


def test_optimizer_decays_only_matrices():
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, bias=True))
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() == 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() == 1 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(m.parameters()))


def test_mfu_formula():
    m = tiny()
    # at exactly flops_per_token * tokens FLOP/s of peak, MFU is 100%
    fpt = m.flops_per_token()
    assert abs(m.estimate_mfu(1000, 1.0, fpt * 1000) - 1.0) < 1e-9


def test_forced_tokens_replace_samples_per_row():
    m = tiny()
    idx = torch.randint(97, (3, 4))
    forced = torch.tensor([[5, 6, -1], [7, -1, -1], [-1, -1, -1]])
    new, _ = m.generate(idx, 8, temperature=0, forced=forced)
    assert new[0, :2].tolist() == [5, 6] and new[1, 0].item() == 7
    # the rest continues from the forced context, as if those tokens had been the prompt
    cont, _ = m.generate(torch.cat([idx[:1], torch.tensor([[5, 6]])], 1), 6, temperature=0)
    assert torch.equal(new[0, 2:], cont[0])
    free, _ = m.generate(idx[2:], 8, temperature=0)
    assert torch.equal(new[2], free[0])
