"""model.py: loss masking, KV-cache generation equals full recomputation (both recipes), rotary
positions, batching, optimizer groups, the learning-rate schedule."""
import math

import pytest
import torch

from formats import IGNORE
from model import GPT, GPTConfig
from training import lr_multiplier


def tiny(block_size=48, seed=0, recipe='modern'):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(block_size=block_size, vocab_size=97, n_layer=2, n_head=2, n_embd=32, recipe=recipe))
    if recipe == 'modern':  # zero-initialized projections make every block the identity: perturb them
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith('c_proj.weight'):
                    p.normal_(0, 0.1)
    return m.eval()


def test_loss_ignores_masked_targets():
    m = tiny()
    x = torch.randint(97, (2, 10))
    y = torch.randint(97, (2, 10))
    logits, full = m(x, y)
    y_masked = y.clone()
    y_masked[:, :5] = IGNORE
    _, part = m(x, y_masked)
    expect = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 97), y[:, 5:].reshape(-1))
    assert torch.allclose(part, expect, atol=1e-5)
    assert not torch.allclose(part, full)


@pytest.mark.parametrize('recipe', ['modern', 'gpt2'])
def test_targets_only_head_gives_the_same_loss_and_gradients(recipe):
    """targets_only (SFT) runs the head only where there is a target: the same loss and gradients as
    the head at every position."""
    m = tiny(recipe=recipe).train()
    x = torch.randint(97, (3, 12))
    y = torch.randint(97, (3, 12))
    y[:, :4] = IGNORE  # a prompt
    y[1, 9:] = IGNORE  # padding
    _, full = m(x, y)
    g_full = torch.autograd.grad(full, list(m.parameters()))
    logits, part = m(x, y, targets_only=True)
    g_part = torch.autograd.grad(part, list(m.parameters()))
    assert torch.allclose(part, full, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_part, g_full))
    assert logits is None


@pytest.mark.parametrize('recipe', ['modern', 'gpt2'])
@pytest.mark.parametrize('prompt_len', [1, 7])
def test_kv_cache_greedy_matches_no_cache(recipe, prompt_len):
    """The rotary angle of a cached key is its position: cached generation must see the same
    positions as re-running the whole context, from a one-token and from a longer prompt."""
    m = tiny(recipe=recipe)
    idx = torch.randint(97, (3, prompt_len))
    a, _ = m.generate(idx, 30, temperature=0)
    b, _ = m.generate(idx, 30, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_rotary_scores_depend_on_relative_position_only():
    """q . k after rotary depends on the distance between their positions, not on where they sit."""
    from model import apply_rotary, rotary_table
    cfg = GPTConfig(block_size=64, n_head=2, n_embd=32)
    rope = rotary_table(cfg)
    q, k = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 16)

    def score(i, j):
        return (apply_rotary(q, rope[i:i + 1]) * apply_rotary(k, rope[j:j + 1])).sum(-1)
    assert torch.allclose(score(5, 2), score(40, 37), atol=1e-5)
    assert torch.allclose(score(0, 0), (q * k).sum(-1), atol=1e-6)  # position 0: no rotation
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)
    # a rotation keeps the norm of every channel pair
    r = apply_rotary(q, rope[17:18]).view(2, 8, 2).norm(dim=-1)
    assert torch.allclose(r, q.view(2, 8, 2).norm(dim=-1), atol=1e-6)


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


@pytest.mark.parametrize('recipe', ['modern', 'gpt2'])
@pytest.mark.parametrize('use_cache', [True, False])
def test_left_padded_prompts_of_different_lengths(recipe, use_cache):
    """Prompts of different lengths in one batch, left-padded: every row generates (greedy) what it
    generates alone, with and without the KV cache (own positions, padding never attended to)."""
    m = tiny(recipe=recipe)
    prompts = [torch.randint(97, (n,)) for n in (1, 5, 9)]
    L = max(len(p) for p in prompts)
    idx = torch.stack([torch.cat([torch.full((L - len(p),), 7), p]) for p in prompts])
    pad = torch.tensor([L - len(p) for p in prompts])
    batched, _ = m.generate(idx, 20, temperature=0, pad=pad, use_cache=use_cache)
    for i, p in enumerate(prompts):
        alone, _ = m.generate(p[None], 20, temperature=0)
        assert torch.equal(batched[i], alone[0]), i


def test_stop_ids_and_annotation_then_response_temperatures():
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
    # the annotation at annotation_temperature (greedy here) until a row emits annotation_end, then the
    # response at temperature: rows that never emit it stay greedy, however hot the response would be
    greedy, _ = m.generate(idx, 10, temperature=0, vocab_limit=90)
    a, _ = m.generate(idx, 10, temperature=5.0, annotation_end=96, annotation_temperature=0, vocab_limit=90,
                      generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, greedy)
    # a row that emits it (forced at step 0) samples its response at temperature from then on
    forced = torch.full((8, 1), 96)
    after, _ = m.generate(idx, 10, temperature=0, annotation_end=96, annotation_temperature=5.0, forced=forced,
                          vocab_limit=90, generator=torch.Generator().manual_seed(1))
    hot, _ = m.generate(idx, 10, temperature=5.0, annotation_end=96, annotation_temperature=0, forced=forced,
                        vocab_limit=90, generator=torch.Generator().manual_seed(1))
    cont, _ = m.generate(torch.cat([idx, forced], 1), 9, temperature=0, vocab_limit=90)
    assert torch.equal(after[:, 1:], cont) and not torch.equal(hot[:, 1:], cont)


def test_banned_ids_are_never_sampled_even_when_the_model_wants_them():
    """A model made to want ids 91-93 at every step (a large bias on their logits) never emits them
    where they are banned: in the annotation (until annotation_end) one set, in the text another,
    and the rest of the distribution is sampled as usual. Without bans it emits them at once."""
    m = tiny()
    boost = torch.zeros(97)
    boost[[91, 92, 93]] = 50.0
    m.lm_head.register_forward_hook(lambda mod, inp, out: out + boost)
    idx = torch.randint(90, (16, 4))
    gen = lambda **kw: m.generate(idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(0),
                                  vocab_limit=97, **kw)[0]
    assert gen().lt(94).all() and gen().ge(91).all()  # unbanned: it writes nothing else
    text = gen(banned=[91, 92, 93])
    assert not torch.isin(text, torch.tensor([91, 92, 93])).any()
    # the annotation may close (93 ends it) but never write 91 or 92; the text after it never 91-93
    both = gen(annotation_end=93, annotation_temperature=1.0, annotation_banned=[91, 92], banned=[91, 92, 93])
    for row in both.tolist():
        assert 91 not in row and 92 not in row and row[0] == 93 and 93 not in row[1:]


def test_generate_respects_block_size():
    m = tiny(block_size=16)
    new, _ = m.generate(torch.zeros(2, 10, dtype=torch.long), 50, temperature=0)
    assert new.shape == (2, 6)


def test_adamw_decays_only_matrices():
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, recipe='gpt2'))
    opt = m.configure_optimizers('adamw', 1e-3, 0.02, 0.1, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and all(p.dim() == 2 for p in decay['params'])
    assert no_decay['weight_decay'] == 0.0 and all(p.dim() == 1 for p in no_decay['params'])
    assert len(decay['params']) + len(no_decay['params']) == len(list(m.parameters()))
    assert decay['base_lr'] == no_decay['base_lr'] == 1e-3


def test_muon_takes_the_hidden_matrices_adamw_the_rest():
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=16))
    opt = m.configure_optimizers('muon', 1e-3, 0.02, 0.0, (0.9, 0.95), 'cpu')
    muon, adamw = opt.opts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = {id(p) for n, p in m.named_parameters() if n.startswith('transformer.h.')}
    assert {id(p) for p in muon.param_groups[0]['params']} == hidden and len(hidden) == 2 * 6
    rest = {id(p) for g in adamw.param_groups for p in g['params']}
    assert rest == {id(m.transformer.wte.weight), id(m.lm_head.weight)}  # untied: two tensors
    assert muon.param_groups[0]['base_lr'] == 0.02 and adamw.param_groups[0]['base_lr'] == 1e-3
    # one step moves every parameter; the state of both optimizers round-trips
    x = torch.randint(64, (2, 8))
    m(x, x)[1].backward()
    opt.step()
    opt2 = m.configure_optimizers('muon', 1e-3, 0.02, 0.0, (0.9, 0.95), 'cpu')
    opt2.load_state_dict(opt.state_dict())
    assert len(opt2.opts[0].state) == 12 and len(opt2.opts[1].state) == 2


def test_lr_schedules():
    # wsd: warmup to 1 over 10 iters, constant, linear warmdown over the last 40 of 100 to 0.1
    f = lambda it: lr_multiplier(it, 100, 10, 'wsd', 0.4, 0.1)
    assert f(0) == pytest.approx(1 / 11) and f(10) == 1.0 and f(60) == 1.0
    assert f(80) == pytest.approx(0.1 + 0.5 * 0.9) and f(100) == pytest.approx(0.1)
    # cosine: halfway between warmup end and max_iters it is halfway between 1 and the floor
    g = lambda it: lr_multiplier(it, 110, 10, 'cosine', 0.4, 0.1)
    assert g(10) == 1.0 and g(60) == pytest.approx(0.55) and g(110) == pytest.approx(0.1)
    assert g(500) == pytest.approx(0.1) and not math.isnan(f(500))


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
    # generation past a forced annotation: the KV cache gives the tokens of full recomputation
    slow, _ = m.generate(idx, 8, temperature=0, forced=forced, use_cache=False)
    assert torch.equal(new, slow)


def test_sample_next_draws_from_the_distribution():
    """Inverse-CDF sampling: frequencies follow the probabilities, a zero-probability token is never
    drawn, top_k and top_p cut the tail, temperature 0 is the argmax."""
    from model import sample_next
    n = 100000
    logits = torch.log(torch.tensor([[0.1, 0.0, 0.6, 0.3]])).repeat(n, 1)
    ones = torch.ones(n)
    freq = torch.bincount(sample_next(logits, ones, generator=torch.Generator().manual_seed(0)), minlength=4) / n
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.01) and freq[1] == 0
    top2 = sample_next(logits, ones, top_k=2, generator=torch.Generator().manual_seed(1))
    assert set(top2.tolist()) == {2, 3}
    top_p = sample_next(logits, ones, top_p=0.5, generator=torch.Generator().manual_seed(2))
    assert set(top_p.tolist()) == {2}  # 0.6 alone covers half the mass
    assert set(sample_next(logits[:5], torch.zeros(5)).tolist()) == {2}
