"""
Prior distillation (anchor_sft.py's anchor_prior='distill'): the prior rows, each an SFT row's prompt
and an annotation drawn from the corpus's annotated stream (for method='sft' the plain counterpart:
the opening line and the first tokens of a corpus document), the SFT format's opening line they
carry, and the loss: SFT's plus the KL toward the frozen pretrained model reading the same
annotation. Why each is built the way it is: docs/METHOD.md, "Keeping the prior at small scale" and
"The controls".
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from common import UserError
from formats import ANN, ASSISTANT, BOS, IGNORE, TEXT, annotation_span, token_stream
from training import load_frozen_pretrained

# -----------------------------------------------------------------------------
# the prior rows: an SFT row's prompt, then an annotation (plain: the opening line, then a document's
# first tokens) drawn from a pretraining stream

def response_start(ids, special):
    """Where the response of an SFT row starts: after <|text|> (anchored), else after <|assistant|>."""
    return annotation_span(ids, special)[1] + 1 if special[ANN] in ids else ids.index(special[ASSISTANT]) + 1


def sft_opening(rows, special):
    """The tokens every SFT response starts with: the format's opening line (none if the responses
    start differently). os.path.commonprefix compares any sequences, lists of ids too."""
    return os.path.commonprefix([ids[response_start(ids, special):] for ids, _ in rows])


def prior_head(ids, special, annotated):
    """How many tokens of an SFT row a prior row keeps: its prompt up to <|ann|> (annotated) or up to
    <|assistant|> (plain), where the model starts choosing what a response is about."""
    return (annotation_span(ids, special)[0] if annotated else ids.index(special[ASSISTANT])) + 1


def prior_row(ids, z, special, opening, annotated):
    """One prior row (lists): student input, where its opening line starts (the position that
    predicts its first token), teacher input, and the student and teacher positions that predict
    the same distilled tokens.
    annotated: the prompt up to <|ann|>, z (an annotation drawn from the prior), <|text|>, the opening
    line; the teacher reads <|bos|><|ann|> z; distilled: z and <|text|>.
    plain (the control's counterpart): the prompt up to <|assistant|>, the opening line, then z (the
    first tokens of a corpus document); the teacher reads <|bos|> z; distilled: z. A response is the
    opening line and then a text, so this is where the plain model writes what a response is about."""
    h = ids[:prior_head(ids, special, annotated)]
    if annotated:
        text = len(h) + len(z)  # the position of <|text|>, which predicts the opening's first token
        return (h + z + [special[TEXT]] + opening, text, [special[BOS], special[ANN]] + z,
                list(range(len(h) - 1, text)), list(range(1, len(z) + 2)))
    start = len(h) + len(opening) - 1  # the position that predicts z's first token
    return (h + opening + z, len(h) - 1, [special[BOS]] + z, list(range(start, start + len(z))),
            list(range(len(z))))


def prior_rows(seqs, zs, special, opening, annotated=True):
    """Prior distillation's rows (prior_row) of a batch, right-padded: the student's input and
    targets (the opening line only), the teacher's input, the teacher and student positions that
    predict the same tokens, and their mask."""
    rows = [prior_row(ids, z, special, opening, annotated) for ids, z in zip(seqs, zs)]
    L, T = max(len(r[0]) for r in rows), max(len(r[2]) for r in rows)
    P = max(len(r[3]) for r in rows)
    x = torch.zeros(len(seqs), L, dtype=torch.long)
    y = torch.full((len(seqs), L), IGNORE, dtype=torch.long)
    t_in = torch.zeros(len(seqs), T, dtype=torch.long)
    t_pos, s_pos = torch.zeros(len(seqs), P, dtype=torch.long), torch.zeros(len(seqs), P, dtype=torch.long)
    mask = torch.zeros(len(seqs), P, dtype=torch.bool)
    for b, (ids, o, t_ids, s, t) in enumerate(rows):
        x[b, :len(ids)] = torch.tensor(ids)
        y[b, o:o + len(opening)] = torch.tensor(opening, dtype=torch.long)
        t_in[b, :len(t_ids)] = torch.tensor(t_ids)
        s_pos[b, :len(s)], t_pos[b, :len(t)] = torch.tensor(s, dtype=torch.long), torch.tensor(t, dtype=torch.long)
        mask[b, :len(s)] = True
    return x, y, t_in, t_pos, s_pos, mask


def annotation_spans(stream, special):
    """(start, end) of every annotation z in an annotated stream (<|ann|> z <|text|>)."""
    ann, txt = np.flatnonzero(stream == special[ANN]), np.flatnonzero(stream == special[TEXT])
    j = np.searchsorted(txt, ann)  # the first <|text|> after each <|ann|>
    ok = j < len(txt)
    return np.stack([ann[ok] + 1, txt[j[ok]]], 1)


def document_spans(stream, special, lengths, rng):
    """The plain counterpart of annotation_spans: (start, end) of the first tokens of documents of
    a plain stream, each as many as the prior row of a random annotation distills (its length + 1,
    for <|text|>), cut at the document's end: the same count of distilled positions, the same cost."""
    bos = np.flatnonzero(stream == special[BOS])
    starts = bos + 1
    ends = np.minimum(starts + rng.choice(lengths + 1, len(starts)), np.append(bos[1:], len(stream)))
    spans = np.stack([starts, ends], 1)
    return spans[spans[:, 1] > spans[:, 0]]


def load_prior(ddir, special, rows, block_size, annotated, seed, opening_weight):
    """What prior distillation draws its prior rows from: a pretraining stream, the (start, end) of
    the spans to distill (annotated: every annotation z; plain: the opening of every document, as
    long as an annotation's row) short enough that a prior row fits in block_size after any SFT
    row's prompt, and the SFT format's opening line (which opening_weight > 0 needs)."""
    ann_stream = token_stream(ddir, 'annotated', 'train', 1)
    spans = annotation_spans(ann_stream, special)
    stream = ann_stream
    if not annotated:
        stream = token_stream(ddir, 'plain', 'train', 1)
        spans = document_spans(stream, special, spans[:, 1] - spans[:, 0], np.random.default_rng(seed))
    opening = sft_opening(rows, special)
    if opening_weight and not opening:
        raise UserError("opening_weight > 0 needs SFT responses that start alike (the format's opening line); "
                        "these have none in common: set opening_weight=0")
    head = max(prior_head(ids, special, annotated) for ids, _ in rows)
    room = block_size - head - len(opening) - (1 if annotated else 0)
    spans = spans[spans[:, 1] - spans[:, 0] <= room]
    if not len(spans):
        raise UserError(f"{ddir}: no {'annotation' if annotated else 'document opening'} fits in "
                        f"block_size={block_size} after an SFT prompt: nothing to distill the prior on")
    return stream, spans, opening


# -----------------------------------------------------------------------------
# the loss: the SFT loss plus the KL toward the frozen pretrained model (the teacher)

def distill_kl(student_logits, teacher_logits, mask):
    """Mean over the masked positions of KL(teacher || student) of the next-token distributions
    (a mean, like the SFT loss it is added to, so distill_weight is a per-token weight):
    logits (B, P, V), mask (B, P). Forward KL (teacher-weighted) keeps every annotation the prior
    would write likely under the student, i.e. it keeps R(z) broad. Zero where they agree."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def prior_distill_loss(model, batch, *, teacher, weight, opening_weight):
    """The training loss with prior distillation (the loop's loss_fn(model, batch), the rest bound
    with partial): the SFT loss, plus weight * the prior-distillation KL and opening_weight * the
    loss of the opening line on the prior rows (a second, short forward)."""
    x, y, p_x, p_y, t_in, t_pos, s_pos, mask = batch
    _, loss = model(x, y, targets_only=True)
    logits = model(p_x, all_logits=True)[0]
    with torch.no_grad():
        t_logits = teacher(t_in, all_logits=True)[0]
        t_logits = t_logits.gather(1, t_pos[..., None].expand(-1, -1, t_logits.size(-1)))
    loss = loss + weight * distill_kl(logits.gather(1, s_pos[..., None].expand(-1, -1, logits.size(-1))),
                                      t_logits, mask)
    if opening_weight:  # load_prior checked that the SFT responses have an opening line
        loss = loss + opening_weight * F.cross_entropy(logits.flatten(0, 1).float(), p_y.flatten(),
                                                       ignore_index=IGNORE)
    return loss


def load_teacher(ckpt, device, meta, annotated, start_dir):
    """The frozen pretrained model that prior distillation keeps the SFT model close to: the SFT's
    own starting point start_dir (for a resumed run, the one it started from); annotated for
    method='anchored' (its annotation prior), plain for method='sft' (the control's counterpart)."""
    if bool(ckpt.get('annotated')) != annotated:
        raise UserError("anchor_prior='distill' with method='anchored' needs an annotated pretrained init_dir (the "
                        "prior to keep), with method='sft' a plain one; use anchor_prior='mask' to train without it")
    return load_frozen_pretrained(start_dir, device, meta['fingerprint'], 'init_dir', annotated)
