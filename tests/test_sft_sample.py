"""anchor_sft.py and sample.py on a tiny corpus: masks in real batches, refusals, sampling modes."""
import json
import os
import shutil

import pytest
import torch

from conftest import TINY_MODEL, one_error_line, run
from formats import ANN, IGNORE, TEXT, encode_annotation, load_meta, load_tokenizer, sft_example


SFT = ['--sft_iters=4', '--sft_eval_interval=2', '--sft_batch_size=4', '--progress=False', '--device=cpu',
       '--log_interval=1']
# anchor_sft.py's defaults are the anchored recipe: standard SFT and the paper's plain masking switch it off
PAPER = ['--anchor_prior=mask', '--replay_rows=0']


@pytest.fixture(scope='module')
def ckpts(tiny_data, tmp_path_factory):
    """Pretrained plain/annotated, and sft/anchor post-trained checkpoints (tiny, a few iters)."""
    root = tmp_path_factory.mktemp('runs')
    common = [f'--data_dir={tiny_data}', '--max_iters=20', '--eval_interval=20', '--eval_iters=1',
              '--learning_rate=3e-3', *TINY_MODEL, '--block_size=256']
    run('pretrain.py', *common, f'--out_dir={root / "base"}')
    run('pretrain.py', *common, f'--out_dir={root / "annotated"}', '--annotated=True')
    r = run('anchor_sft.py', '--method=sft', *PAPER, f'--init_dir={root / "base"}', f'--out_dir={root / "sft"}', *SFT)
    assert 'done: 4 iters' in r.stdout
    run('anchor_sft.py', '--method=anchored', *PAPER, f'--init_dir={root / "annotated"}',
        f'--out_dir={root / "anchor"}', *SFT, '--sft_patience=1', '--sft_min_delta=0.001')  # the early-stopping rule
    # the recipe (anchor_sft.py's defaults), said out loud at this size: prior distillation, replay of
    # annotated documents, SFT dropout, own lr
    recipe = ['--replay_rows=2', '--replay_docs=True', '--sft_dropout=0.1', '--replay_lr_frac=0.3']
    run('anchor_sft.py', '--method=anchored', '--anchor_prior=distill', '--opening_weight=0.05', *recipe,
        f'--init_dir={root / "annotated"}', f'--out_dir={root / "distill"}', *SFT)
    # and its fair control: standard SFT with the same replay, from the plain stream, at the same rate
    run('anchor_sft.py', '--method=sft', '--anchor_prior=mask', *recipe, f'--init_dir={root / "base"}',
        f'--out_dir={root / "sft-replay"}', *SFT)
    # and its strongest control: the same, plus the plain counterpart of prior distillation
    run('anchor_sft.py', '--method=sft', '--anchor_prior=distill', '--opening_weight=0.05', *recipe,
        f'--init_dir={root / "base"}', f'--out_dir={root / "sft-distill"}', *SFT)
    return root


def test_anchored_batch_supervises_exactly_response_and_key_rows(tiny_data):
    """A real padded batch from anchor_sft's batcher, with the real tokenizer, position by position:
    prompt and annotation masked; in the key row also <|ann|>, the keys, separators and <|text|>."""
    import anchor_sft
    from formats import ASSISTANT, BOS, END, USER, encode, encode_annotation
    meta = load_meta(tiny_data)
    enc, special = load_tokenizer(tiny_data, meta), meta['special_tokens']
    prompt, z, resp = 'Hi there.', 'topic:Arts entity:Mona_Lisa', 'Sure!\nA poem.'
    p_ids, (z_ids, is_value), y_ids = encode(enc, prompt), encode_annotation(enc, z), encode(enc, resp)
    ids = ([special[BOS], special[USER]] + p_ids + [special[ASSISTANT], special[ANN]] + z_ids + [special[TEXT]]
           + y_ids + [special[END]])
    rows = [sft_example(enc, special, prompt, resp, z, key_row=k) for k in (False, True)]
    rows.append(sft_example(enc, special, 'Hi.', 'Ok.'))  # shorter standard row: gets padded
    get_batch = anchor_sft.make_get_batch(rows, 'cpu', special, 3, 1)  # 3 rows a batch, 1 micro-batch
    x, y = get_batch('train', torch.Generator().manual_seed(0), [0])[0]
    assert x.shape == (3, len(ids))
    n_prefix = 2 + len(p_ids) + 1  # <|bos|> <|user|> x <|assistant|>
    for b in range(3):
        row = [r for r in rows if x[b, :len(r[0])].tolist() == r[0]][0]
        assert (x[b, len(row[0]):] == 0).all() and (y[b, len(row[1]):] == IGNORE).all()  # padding
        if len(row[0]) != len(ids):
            continue
        key_row = row is rows[1]
        assert row[0] == ids
        for pos in range(len(ids) - 1):
            tok = pos + 1  # y[b, pos] is the label of token ids[pos + 1]
            if tok < n_prefix:
                want = False  # the prompt
            elif tok == n_prefix:
                want = key_row  # <|ann|>
            elif tok <= n_prefix + len(z_ids):
                want = key_row and not is_value[tok - n_prefix - 1]  # keys yes, values never
            elif tok == n_prefix + len(z_ids) + 1:
                want = key_row  # <|text|>
            else:
                want = True  # the response and <|end|>
            assert y[b, pos].item() == (ids[tok] if want else IGNORE), (b, pos, key_row)
    assert any(is_value) and not all(is_value)


def test_prior_rows_positions_and_loss(tiny_data):
    """prior_rows puts a drawn annotation z after each SFT row's prompt, then <|text|> and the opening
    line (the only targets); every student position that predicts z or <|text|> (from <|ann|> to
    the last token of z) is paired with the teacher reading <|bos|><|ann|> z; the KL is zero where
    the two agree and its gradient reaches only those positions. sft_opening is what every response
    starts with, and load_prior finds every annotation of the annotated stream."""
    from formats import BOS, annotation_span, token_stream
    from prior import distill_kl, load_prior, prior_rows, sft_opening
    meta = load_meta(tiny_data)
    enc, special = load_tokenizer(tiny_data, meta), meta['special_tokens']
    rows = [sft_example(enc, special, 'Hi there.', 'Sure!\nA poem.', 'topic:Arts'),
            sft_example(enc, special, 'Hi.', 'Sure!\nOk.', 'topic:Sport')]
    opening = sft_opening(rows, special)
    start, end = annotation_span(rows[0][0], special)
    assert opening == rows[0][0][end + 1:end + 1 + len(opening)] and enc.decode(opening).startswith('Sure!')
    assert sft_opening(rows + [sft_example(enc, special, 'Hi.', 'No.', 'topic:Arts')], special) == []
    zs = [encode_annotation(enc, 'topic:History entity:Rome')[0], encode_annotation(enc, 'topic:Sport')[0]]
    x, y, t_in, t_pos, s_pos, mask = prior_rows([ids for ids, _ in rows], zs, special, opening)
    for b, ((ids, _), z) in enumerate(zip(rows, zs)):
        start = annotation_span(ids, special)[0]
        text = start + 1 + len(z)
        student = ids[:start + 1] + z + [special[TEXT]] + opening
        assert x[b, :len(student)].tolist() == student and not x[b, len(student):].any()
        pos = s_pos[b][mask[b]].tolist()
        assert pos == list(range(start, text))
        assert [student[p + 1] for p in pos] == z + [special[TEXT]]  # the student predicts z, then <|text|>
        teacher = [special[BOS], special[ANN]] + z
        assert t_in[b, :len(teacher)].tolist() == teacher
        # aligned positions read the same token: teacher position j + 1 and student position start + j
        assert t_pos[b][mask[b]].tolist() == list(range(1, len(pos) + 1))
        assert [t_in[b, j + 1].item() for j in range(len(pos))] == [student[p] for p in pos]
        # the opening line is the only target: <|text|> predicts its first token, its last predicts nothing
        assert [(i, t) for i, t in enumerate(y[b].tolist()) if t != IGNORE] == \
            [(text + i, t) for i, t in enumerate(opening)]
    assert mask.sum(1).tolist() == [len(z) + 1 for z in zs]

    torch.manual_seed(0)
    V = 11
    logits = torch.randn(2, x.size(1), V, requires_grad=True)
    gather = lambda lg: lg.gather(1, s_pos[..., None].expand(-1, -1, V))
    same = distill_kl(gather(logits), gather(logits).detach(), mask)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    other = gather(logits).detach() + torch.randn(2, s_pos.size(1), V)
    kl = distill_kl(gather(logits), other, mask)
    assert kl.item() > 0
    kl.backward()
    touched = logits.grad.abs().sum(-1) > 0
    expect = torch.zeros_like(touched)
    for b in range(2):
        expect[b, s_pos[b][mask[b]]] = True
    assert torch.equal(touched, expect)  # no gradient at the prompt, the opening line or the padding

    stream, spans, found = load_prior(tiny_data, special, rows, 256, True, 0, opening_weight=0.0)
    assert found == opening and torch.equal(torch.from_numpy(stream.astype('int64')),
                                            torch.from_numpy(token_stream(tiny_data, 'annotated', 'train', 1)
                                                             .astype('int64')))
    assert len(spans) == int((stream == special[ANN]).sum()) > 0
    assert all(stream[a - 1] == special[ANN] and stream[b] == special[TEXT] and special[TEXT] not in stream[a:b]
               for a, b in spans)
    # only annotations whose prior row fits in block_size after the longest prompt
    head = max(annotation_span(ids, special)[0] + 1 for ids, _ in rows)
    room = int(sorted(spans[:, 1] - spans[:, 0])[len(spans) // 2])  # the median annotation's length
    short = load_prior(tiny_data, special, rows, head + room + 1 + len(opening), True, 0, 0.0)[1]
    assert 0 < len(short) < len(spans) and (short[:, 1] - short[:, 0]).max() == room


def test_replay_rows_and_their_loss(tiny_data):
    """replay_rows windows of the stream follow the SFT rows of a training batch, as long as the
    batch, every token a target (y = x shifted by one); evaluation batches have none; the SFT rows
    are the ones drawn without replay, and the prior rows carry their prompts. With a student that
    agrees with the teacher the KL is 0: the loss is the LM loss over SFT and replay targets plus
    opening_weight * the loss of the prior rows' opening lines."""
    import numpy as np
    import anchor_sft
    from formats import annotation_span
    from prior import load_prior, prior_distill_loss
    meta = load_meta(tiny_data)
    enc, special = load_tokenizer(tiny_data, meta), meta['special_tokens']
    rows = [sft_example(enc, special, p, 'Sure!\nA poem.', z)
            for p, z in (('Hi there.', 'topic:Arts entity:Mona_Lisa'), ('Hi.', 'topic:Sport'), ('Yo.', 'topic:Arts'))]
    stream = np.arange(1000, dtype=np.uint16) % 97 + 5
    prior = load_prior(tiny_data, special, rows, 256, True, 0, opening_weight=0.5)
    plain = anchor_sft.make_get_batch(rows, 'cpu', special, 3, 1, prior, annotated=True)
    mixed = anchor_sft.make_get_batch(rows, 'cpu', special, 3, 1, prior, anchor_sft.Replay(stream, 2, False),
                                      annotated=True)
    x0, y0, *_ = plain('train', torch.Generator().manual_seed(3), [0])[0]
    x, y, *d = mixed('train', torch.Generator().manual_seed(3), [0])[0]
    assert x.shape == (5, x0.size(1)) and torch.equal(x[:3], x0) and torch.equal(y[:3], y0)
    for b in range(3):  # each prior row starts with its SFT row's prompt, up to <|ann|>
        start = annotation_span(x[b].tolist(), special)[0]
        assert torch.equal(d[0][b, :start + 1], x[b, :start + 1])
    for r in (3, 4):
        i = (x[r, 0].item() - 5) % 97  # the stream is periodic: any window start maps to one offset
        assert x[r].tolist() == [(i + j) % 97 + 5 for j in range(x.size(1))]
        assert torch.equal(y[r, :-1], x[r, 1:]) and y[r, -1].item() == (i + x.size(1)) % 97 + 5
    assert [len(b) for b in anchor_sft.val_batches(rows, 'cpu', 3)] == [2]  # evaluation: x and y of the rows only
    # a student that reads like the teacher (logits = a table of the current token) distils to 0
    V = int(max(x.max(), d[0].max(), d[2].max())) + 1
    table = torch.randn(V, V)
    ce = lambda logits, t: torch.nn.functional.cross_entropy(logits.flatten(0, 1), t.flatten(), ignore_index=IGNORE)

    def model(inp, targets=None, all_logits=False, targets_only=False):
        return table[inp], ce(table[inp], targets) if targets is not None else None
    loss = prior_distill_loss(model, (x, y, *d), teacher=model, weight=1.0, opening_weight=0.5)
    assert loss.item() == pytest.approx(model(x, y)[1].item() + 0.5 * ce(table[d[0]], d[1]).item(), abs=1e-5)


def test_replay_docs_window(tiny_data):
    """replay_docs: a window starts at the next document start, so its text comes with its
    annotation, and exactly the targets where pretraining and the SFT format disagree are masked:
    the token after <|text|> (the SFT response's opening line) and the end of a text (<|bos|> or the
    <|ann|> of a next chunk; the SFT format ends with <|end|>). The annotation after <|bos|><|ann|>
    stays a target. In the plain stream the same two: the token after <|bos|> and the <|bos|> that
    ends a text. Without replay_docs the window is the stream as drawn, every token a target."""
    import numpy as np
    import anchor_sft
    from formats import BOS
    special = load_meta(tiny_data)['special_tokens']
    bos, ann, txt = special[BOS], special[ANN], special[TEXT]
    # two documents: one chunk (z 11 12, text 21 22 23), then two chunks (z 13, text 24 25; z 14, text 26)
    doc = [bos, ann, 11, 12, txt, 21, 22, 23, bos, ann, 13, txt, 24, 25, ann, 14, txt, 26]
    stream = np.array(doc * 4, dtype=np.uint16)
    x, y = anchor_sft.replay_window(stream, 2, 18, special, True, docs=True)  # drawn inside the first document
    assert x.tolist() == doc[8:] + doc[:8]  # moved to the next <|bos|>
    assert y.tolist() == [ann, 13, txt, IGNORE, 25, IGNORE, 14, txt, IGNORE, IGNORE,
                          ann, 11, 12, txt, IGNORE, 22, 23, IGNORE]
    # the plain stream (the fair control's replay): the same rule, a text starting after <|bos|>
    plain = np.array([bos, 21, 22, 23, bos, 24, 25, bos, 26] * 4, dtype=np.uint16)
    x, y = anchor_sft.replay_window(plain, 1, 9, special, False, docs=True)
    assert x.tolist() == [bos, 24, 25, bos, 26, bos, 21, 22, 23]
    assert y.tolist() == [IGNORE, 25, IGNORE, IGNORE, IGNORE, IGNORE, 22, 23, IGNORE]
    x, y = anchor_sft.replay_window(stream, 2, 18, special, True, docs=False)
    assert x.tolist() == (doc * 2)[2:20] and y.tolist() == (doc * 2)[3:21]


def test_sft_outputs(ckpts):
    ck = torch.load(ckpts / 'anchor' / 'ckpt.pt', weights_only=False)
    assert ck['stage'] == 'sft' and ck['method'] == 'anchored' and ck['iter_num'] == 4
    s = json.load(open(ckpts / 'anchor' / 'sft_set.json'))
    assert s['rows'] > 0 and s['sft_key'] == 'topic' and 0 < s['entropy_bits'] <= 1.0001  # two topics
    # the SFT length rule. Default (sft_patience 0): a fixed length, the last checkpoint is the model
    for name in ('sft', 'distill', 'sft-replay', 'sft-distill'):
        assert not (ckpts / name / 'best.pt').exists()
        assert torch.load(ckpts / name / 'ckpt.pt', weights_only=False)['iter_num'] == 4
    # with sft_patience: the checkpoint of the lowest val loss is kept as best.pt (here: 'anchor')
    evals = [(h['val_loss'], h['iter']) for h in ck['history'] if 'val_loss' in h]
    best = torch.load(ckpts / 'anchor' / 'best.pt', weights_only=False)
    assert (best['best_val_loss'], best['iter_num']) == min(evals)
    d = torch.load(ckpts / 'distill' / 'ckpt.pt', weights_only=False)
    assert d['anchor_prior'] == 'distill' and ck['anchor_prior'] == 'mask'
    sd = torch.load(ckpts / 'sft-distill' / 'ckpt.pt', weights_only=False)
    assert sd['anchor_prior'] == 'distill' and sd['method'] == 'sft' and not sd['annotated']
    # the learning rates: sft_lr_frac (0.1 by default) of the pretraining's; replay_lr_frac for an arm
    # that replays, whatever its method (the fair control trains like the anchored arm)
    pre = torch.load(ckpts / 'annotated' / 'ckpt.pt', weights_only=False)['config']
    for c, frac in ((ck, 0.1), (d, 0.3), (torch.load(ckpts / 'sft-replay' / 'ckpt.pt', weights_only=False), 0.3),
                    (sd, 0.3)):
        lrs = sorted({g['base_lr'] for o in c['optimizer'] for g in o['param_groups']})  # AdamW and Muon
        assert lrs == pytest.approx(sorted(frac * pre[k] for k in ('learning_rate', 'matrix_lr')))


def test_sft_val_loss_is_the_whole_val_set(tiny_data, ckpts):
    """Every evaluation reads every row of the SFT val set once, the same rows each time: the val
    loss of the history is the token-weighted loss of the whole set, computed here by hand row by row."""
    import anchor_sft
    from training import load_checkpoint, model_from_checkpoint
    meta = load_meta(tiny_data)
    enc, special = load_tokenizer(tiny_data, meta), meta['special_tokens']
    every_row = anchor_sft.RowPick(topics='', max_rows=0, key_fraction=0.0, seed=0)
    rows, _ = anchor_sft.load_rows(os.path.join(tiny_data, 'sft_val.jsonl'), enc, special, 256, False,
                                   __import__('random').Random(0), 'val', 'topic', every_row)
    batches = anchor_sft.val_batches(rows, 'cpu', 3)  # batches of 3 rows: the last one shorter, padding never a target
    again = anchor_sft.val_batches(rows, 'cpu', 3)
    assert all(torch.equal(a, b) for x, y in zip(batches, again) for a, b in zip(x, y))
    flat = [(x[i], y[i]) for x, y in batches for i in range(len(x))]
    assert len(flat) == len(rows) > 3  # every row once, in the file's order
    for (x, y), (ids, targets) in zip(flat, rows):
        assert x[:len(ids)].tolist() == ids and y[:len(targets)].tolist() == targets
        assert (y[len(targets):] == IGNORE).all()
    ck = load_checkpoint(str(ckpts / 'sft' / 'ckpt.pt'))
    model = model_from_checkpoint(ck, 'cpu').eval()
    total = count = 0
    with torch.no_grad():
        for ids, targets in rows:
            logits = model(torch.tensor([ids]), torch.tensor([targets]))[0][0]
            t = torch.tensor(targets)
            keep = t != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], t[keep], reduction='sum').item()
            count += int(keep.sum())
    last = [h['val_loss'] for h in ck['history'] if 'val_loss' in h][-1]
    assert last == pytest.approx(total / count, rel=1e-4)


def test_seeds_give_distinct_runs_and_samples(ckpts, tmp_path):
    """A seed changes the data order and dropout of SFT and the draws of sampling: two seeds give two
    different models and sample sets; the same seed gives the same ones."""
    common = [f'--init_dir={ckpts / "base"}', '--method=sft', *PAPER, *SFT, '--sft_dropout=0.1']
    for s, name in ((1, 'a'), (2, 'b'), (1, 'c')):
        run('anchor_sft.py', *common, f'--seed={s}', f'--out_dir={tmp_path / name}')
        run('sample.py', f'--ckpt_dir={tmp_path / name}', f'--out={tmp_path / name}.jsonl', f'--seed={s}',
            '--num_samples=2', '--max_new_tokens=12', '--progress=False', '--device=cpu')
    w = {n: torch.load(tmp_path / n / 'ckpt.pt', weights_only=False)['model'] for n in 'abc'}
    differ = lambda x, y: any(not torch.equal(x[k], y[k]) for k in x)
    assert differ(w['a'], w['b']) and not differ(w['a'], w['c'])
    assert samples(tmp_path / 'a.jsonl') != samples(tmp_path / 'b.jsonl')
    assert samples(tmp_path / 'a.jsonl') == samples(tmp_path / 'c.jsonl')


def test_distill_needs_a_teacher_of_its_kind(ckpts):
    """Anchored distillation needs an annotated prior to keep (a plain pretrained model has none); the
    control's counterpart distills toward the plain pretrained model it starts from."""
    r = run('anchor_sft.py', '--method=anchored', '--anchor_prior=distill', f'--init_dir={ckpts / "base"}',
            f'--out_dir={ckpts / "nope"}', *SFT, check=False)
    one_error_line(r, "with method='anchored' needs an annotated pretrained init_dir")
    r = run('anchor_sft.py', '--method=sft', '--anchor_prior=distill', f'--init_dir={ckpts / "annotated"}',
            f'--out_dir={ckpts / "nope"}', *SFT, check=False)
    one_error_line(r, "with method='sft' a plain one")


def test_plain_prior_rows_are_the_counterpart(tiny_data):
    """The control's prior rows: the SFT prompt up to <|assistant|>, the opening line (the only
    target), then the first tokens of a corpus document, each predicted at the student position
    that the teacher (the plain pretrained model reading <|bos|> and the document) predicts it at;
    as many distilled positions as an annotated prior row has (its annotation and <|text|>)."""
    import numpy as np
    from formats import ASSISTANT, BOS, encode, token_stream
    from prior import annotation_spans, load_prior, prior_rows, sft_opening
    meta = load_meta(tiny_data)
    enc, special = load_tokenizer(tiny_data, meta), meta['special_tokens']
    rows = [sft_example(enc, special, 'Hi there.', 'Sure!\nA poem.'), sft_example(enc, special, 'Hi.', 'Sure!\nOk.')]
    opening = sft_opening(rows, special)
    assert enc.decode(opening).startswith('Sure!')
    docs = [encode(enc, 'The river flows'), encode(enc, 'Rome')]
    x, y, t_in, t_pos, s_pos, mask = prior_rows([ids for ids, _ in rows], docs, special, opening, annotated=False)
    for b, ((ids, _), d) in enumerate(zip(rows, docs)):
        h = ids[:ids.index(special[ASSISTANT]) + 1]
        student = h + opening + d
        assert x[b, :len(student)].tolist() == student and not x[b, len(student):].any()
        assert [(i, t) for i, t in enumerate(y[b].tolist()) if t != IGNORE] == \
            [(len(h) - 1 + i, t) for i, t in enumerate(opening)]
        assert t_in[b, :len(d) + 1].tolist() == [special[BOS]] + d
        sp, tp = s_pos[b][mask[b]].tolist(), t_pos[b][mask[b]].tolist()
        assert [student[p + 1] for p in sp] == d == [t_in[b, p + 1].item() for p in tp]
    # the documents' openings, each as long as a random annotation's row, cut at the document's end
    stream, spans, _ = load_prior(tiny_data, special, rows, 256, False, 0, opening_weight=0.0)
    assert np.array_equal(stream, token_stream(tiny_data, 'plain', 'train', 1))
    assert all(stream[a - 1] == special[BOS] and special[BOS] not in stream[a:b] for a, b in spans)
    ann = token_stream(tiny_data, 'annotated', 'train', 1)
    longest = int(np.diff(annotation_spans(ann, special), axis=1).max()) + 1
    assert 0 < (spans[:, 1] - spans[:, 0]).max() <= longest


def test_sft_refusals(tiny_data, ckpts, tmp_path):
    base = [f'--init_dir={ckpts / "base"}', f'--out_dir={tmp_path / "o"}', *PAPER, *SFT]
    one_error_line(run('anchor_sft.py', *base, '--method=magic', check=False),
                   "method must be one of sft, anchored; got 'magic'")
    # a data dir whose tokenizer differs from the checkpoint's
    other = tmp_path / 'other'
    shutil.copytree(tiny_data, other)
    meta = json.load(open(other / 'meta.json'))
    meta['fingerprint'] = 'different'
    json.dump(meta, open(other / 'meta.json', 'w'))
    one_error_line(run('anchor_sft.py', *base, f'--data_dir={other}', check=False), 'does not match')
    # anchored SFT on a data dir without annotations
    meta['fingerprint'] = json.load(open(os.path.join(tiny_data, 'meta.json')))['fingerprint']
    meta['annotation_keys'] = []
    json.dump(meta, open(other / 'meta.json', 'w'))
    one_error_line(run('anchor_sft.py', *base, f'--data_dir={other}', '--method=anchored', check=False),
                   'needs a data dir with annotations')
    # rows longer than block_size: all of them -> error; nothing written
    small = tmp_path / 'small'
    run('pretrain.py', f'--data_dir={tiny_data}', f'--out_dir={small}', '--max_iters=1', '--eval_interval=1',
        '--eval_iters=1', *TINY_MODEL, '--block_size=32')
    r = run('anchor_sft.py', f'--init_dir={small}', f'--out_dir={tmp_path / "o2"}', *PAPER, *SFT, check=False)
    one_error_line(r, 'longer than block_size=32')
    assert not (tmp_path / 'o2' / 'ckpt.pt').exists()
    # a pretrain checkpoint passed where an SFT one is resumed
    one_error_line(run('anchor_sft.py', f'--out_dir={ckpts / "base"}', '--init_from=resume', *SFT, check=False),
                   'not a method')
    # resuming with another replay than the run was trained with
    shutil.copytree(ckpts / 'distill', tmp_path / 'd')
    one_error_line(run('anchor_sft.py', f'--out_dir={tmp_path / "d"}', '--init_from=resume', '--method=anchored',
                       '--anchor_prior=distill', '--replay_rows=1', *SFT, check=False), 'trained with replay_rows=2')
    one_error_line(run('anchor_sft.py', f'--out_dir={tmp_path / "d"}', '--init_from=resume', '--method=anchored',
                       '--anchor_prior=distill', '--replay_rows=2', '--replay_docs=False', *SFT, check=False),
                   'trained with replay_docs=True')
    one_error_line(run('anchor_sft.py', *base, '--sft_dropout=1.0', check=False), 'sft_dropout must be')
    # replay from a data dir without the annotated stream: refused before anything is written
    bare = tmp_path / 'bare'
    shutil.copytree(tiny_data, bare)
    os.remove(bare / 'annotated_train.bin')
    r = run('anchor_sft.py', '--method=anchored', '--anchor_prior=mask', '--replay_rows=2', f'--data_dir={bare}',
            f'--init_dir={ckpts / "annotated"}', f'--out_dir={tmp_path / "o3"}', *SFT, check=False)
    one_error_line(r, 'token stream not found')
    assert not (tmp_path / 'o3' / 'sft_set.json').exists()
    # and the fair control's replay from a data dir without the plain stream
    os.remove(bare / 'plain_train.bin')
    r = run('anchor_sft.py', '--method=sft', '--anchor_prior=mask', '--replay_rows=2', f'--data_dir={bare}',
            f'--init_dir={ckpts / "base"}', f'--out_dir={tmp_path / "o4"}', *SFT, check=False)
    one_error_line(r, 'plain_train.bin')


def samples(path):
    return [json.loads(l) for l in open(path)]


FIELDS = {'prompt_id', 'prompt', 'sample_id', 'annotation', 'text', 'tokens', 'finished'}


def test_sample_modes(ckpts, tmp_path):
    args = ['--num_samples=3', '--max_new_tokens=30', '--progress=False', '--device=cpu']
    for name, has_ann in (('base', False), ('annotated', True), ('sft', False), ('anchor', True)):
        out = tmp_path / f'{name}.jsonl'
        run('sample.py', f'--ckpt_dir={ckpts / name}', f'--out={out}', *args)
        rows = samples(out)
        assert len(rows) == 14 * 3 and all(set(r) == FIELDS for r in rows)
        assert all((r['annotation'] is not None) == has_ann for r in rows)
        assert all('<|' not in r['text'] for r in rows)  # never a special token in the visible text
    pinned = tmp_path / 'pinned.jsonl'
    run('sample.py', f'--ckpt_dir={ckpts / "anchor"}', f'--out={pinned}', '--annotation=topic:Sport', *args)
    assert all(r['annotation'].startswith('topic:Sport') for r in samples(pinned))
    prior = tmp_path / 'prior.jsonl'  # annotations drawn from the annotated pretrained model
    run('sample.py', f'--ckpt_dir={ckpts / "anchor"}', f'--out={prior}', f'--annotation_from={ckpts / "annotated"}',
        *args)
    assert all(r['annotation'] is not None and '<|' not in r['text'] for r in samples(prior))
    one_error_line(run('sample.py', f'--ckpt_dir={ckpts / "anchor"}', f'--annotation_from={ckpts / "base"}',
                       check=False), 'not an annotated pretrained checkpoint')
    noann = tmp_path / 'noann.jsonl'
    run('sample.py', f'--ckpt_dir={ckpts / "anchor"}', f'--out={noann}', '--no_annotation=True', *args)
    assert all(r['annotation'] == '' for r in samples(noann))


def test_sample_batched_equals_one_at_a_time(ckpts, tmp_path):
    """Greedy: batches holding the rows of several prompts of different lengths (left-padded) with
    the KV cache give the tokens of one-at-a-time sampling without the cache."""
    args = [f'--ckpt_dir={ckpts / "anchor"}', '--num_samples=2', '--max_new_tokens=16', '--temperature=0',
            '--progress=False', '--device=cpu']
    run('sample.py', *args, '--sample_batch_size=24', f'--out={tmp_path / "a.jsonl"}')
    # (one of the two a fresh process: tests/forkserver.py's children share a hash seed)
    run('sample.py', *args, '--sample_batch_size=1', '--use_cache=False', f'--out={tmp_path / "b.jsonl"}', fresh=True)
    a = samples(tmp_path / 'a.jsonl')
    assert a == samples(tmp_path / 'b.jsonl')
    assert len({len(r['prompt']) for r in a[:24]}) > 1  # a batch really held prompts of different lengths


def test_sample_budget_is_the_same_for_every_row(ckpts, tmp_path):
    """max_new_tokens past block_size: every row gets what fits after the longest prompt, so a
    sample never depends on which prompts share its batch."""
    prompts = tmp_path / 'prompts.jsonl'  # three prompts of different lengths
    prompts.write_text(''.join(json.dumps({'prompt_id': i, 'prompt': 'Tell me about ' + 'art ' * n}) + '\n'
                               for i, n in enumerate((1, 9, 30))))
    args = [f'--ckpt_dir={ckpts / "sft"}', f'--prompts={prompts}', '--num_samples=1', '--max_new_tokens=100000',
            '--temperature=0', '--progress=False', '--device=cpu']
    r = run('sample.py', *args, '--sample_batch_size=64', f'--out={tmp_path / "a.jsonl"}')
    assert 'every sample gets' in r.stdout
    run('sample.py', *args, '--sample_batch_size=1', f'--out={tmp_path / "b.jsonl"}', fresh=True)
    a = samples(tmp_path / 'a.jsonl')
    assert a == samples(tmp_path / 'b.jsonl')
    assert any(not row['finished'] for row in a)  # some rows ran into the budget


def test_text_budget_is_the_same_with_or_without_annotation(tiny_data):
    """split_sample: the text after a sampled annotation gets max_new_tokens of its own, like an
    SFT response: finished if it stops within them, tokens counts the text and its stop only."""
    import sample
    from formats import END
    meta = load_meta(tiny_data)
    enc, special = load_tokenizer(tiny_data, meta), meta['special_tokens']
    z = encode_annotation(enc, 'topic:Arts')[0]
    words = enc.encode_ordinary(' a b c d e f g h i j k l')[:10]
    assert len(words) == 10
    for head, mode in (([], 'sft'), (z + [special[TEXT]], 'anchored')):
        p = sample.plan(mode, mode == 'anchored', enc, special, 'Hi.', annotation='', no_annotation=False)
        split = lambda ids: sample.split_sample(head + ids + [special[END]], p, special, enc, max_new_tokens=10)
        ann, text, fin, n = split(words[:9])
        assert (ann, text, fin, n) == ('topic:Arts' if head else None, enc.decode(words[:9]), True, 10)
        ann, text, fin, n = split(words)
        assert (text, fin, n) == (enc.decode(words), False, 10)  # the stop came after the budget


def test_sample_refusals(ckpts, tmp_path):
    one_error_line(run('sample.py', f'--ckpt_dir={ckpts / "sft"}', '--threads=-1', check=False), 'threads')
    one_error_line(run('sample.py', f'--ckpt_dir={ckpts / "sft"}', '--no_annotation=True', check=False),
                   'need an anchored checkpoint')
    one_error_line(run('sample.py', f'--ckpt_dir={ckpts / "base"}', '--annotation=topic:Arts', check=False),
                   'need an anchored checkpoint')
    long_prompt = tmp_path / 'long.jsonl'
    long_prompt.write_text(json.dumps({'prompt_id': 0, 'prompt': 'word ' * 400}) + '\n')
    one_error_line(run('sample.py', f'--ckpt_dir={ckpts / "sft"}', f'--prompts={long_prompt}', check=False),
                   'does not fit block_size')
    weird = tmp_path / 'weird'
    weird.mkdir()
    ck = torch.load(ckpts / 'sft' / 'ckpt.pt', weights_only=False)
    ck['stage'] = 'mystery'
    torch.save(ck, weird / 'ckpt.pt')
    one_error_line(run('sample.py', f'--ckpt_dir={weird}', check=False), 'unknown type')
    one_error_line(run('sample.py', f'--ckpt_dir={tmp_path / "none"}', check=False), 'checkpoint not found')
