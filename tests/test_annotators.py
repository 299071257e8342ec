"""annotators.py: the embed annotator (zero-shot labels, clusters) on the bundled MiniLM, and the LLM
annotator's plumbing (batching, parsing, fallback counting, the resumable cache) on a tiny random
model and tokenizer made here: nothing is downloaded."""
import json
import os
import random

import numpy as np
import pytest

import annotators
from annotators import cluster_names, make_annotator, parse_answer, parse_labels, settings
from common import UserError
from conftest import TOPIC_WORDS


KEYS = ['topic', 'domain', 'entity', 'action', 'location', 'time', 'sentiment', 'style']
LABELS = ('Arts: painting, music, sculpture; Science: physics, chemistry, atom; '
          'Geography: river, mountain, country; Sport: football, tennis, stadium')


def topic_docs(n, seed):
    """(texts, topics): sentences of one topic's words each, as in conftest's corpus."""
    rng = random.Random(seed)
    topics = [sorted(TOPIC_WORDS)[i % 4] for i in range(n)]
    texts = [' '.join(rng.choice(TOPIC_WORDS[t].split()) for _ in range(10)).capitalize() + '.' for t in topics]
    return texts, topics


# -----------------------------------------------------------------------------
# config

def test_parse_labels_syntax():
    assert parse_labels('') == [] and parse_labels(' ; ') == []
    assert parse_labels('Arts: painting, music and film ;Fine  arts;\n Science:physics,') == [
        ('Arts', ['Arts', 'painting', 'music and film']), ('Fine arts', ['Fine arts']),
        ('Science', ['Science', 'physics'])]
    for spec, needle in [('Arts: x', 'at least 2'), (': x; Arts', 'no label name'),
                         ('Fine arts; Fine  arts: x', 'twice')]:
        with pytest.raises(UserError, match=needle):
            parse_labels(spec)


@pytest.mark.parametrize('kind,cfg,needle', [
    ('magic', {}, 'annotator must be one of keywords, embed, llm'),
    ('keywords', {'keywords_per_chunk': 0}, 'keywords_per_chunk must be > 0'),
    ('embed', {'embed_key': 'my topic'}, 'embed_key'),
    ('embed', {'embed_clusters': 1}, 'embed_clusters must be >= 2'),
    ('embed', {'embed_labels': 'Arts'}, 'at least 2 labels'),
    ('embed', {'device': 'gpu'}, 'device must be'),
    ('embed', {'embed_batch_size': 0}, 'embed_batch_size must be > 0'),
    ('llm', {}, 'needs llm_model'),
    ('llm', {'llm_model': 'm', 'llm_keys': ' , '}, 'llm_keys is empty'),
    ('llm', {'llm_model': 'm', 'llm_keys': 'topic,time:of_day'}, 'llm_keys entry'),
    ('llm', {'llm_model': 'm', 'llm_fallback': 'unknown'}, 'llm_fallback'),
    ('llm', {'llm_model': 'm', 'llm_backend': 'tgi'}, 'llm_backend must be one of'),
    ('llm', {'llm_model': 'm', 'llm_value_chars': 0}, 'llm_value_chars must be > 0'),
])
def test_bad_config_is_one_clear_error(kind, cfg, needle):
    with pytest.raises(UserError, match=needle):
        settings(kind, cfg)


def test_bad_cache_dir_and_model_before_any_generation(tmp_path):
    (tmp_path / 'f').write_text('')
    with pytest.raises(UserError, match='llm_cache_dir'):
        settings('llm', {'llm_model': 'm', 'llm_cache_dir': str(tmp_path / 'f')})
    with pytest.raises(UserError, match="could not load llm_model '/no/such/model'"):
        make_annotator('llm', {'llm_model': '/no/such/model', 'llm_cache_dir': '', 'device': 'cpu'})


# -----------------------------------------------------------------------------
# embed

@pytest.fixture(scope='module')
def one_embedder():
    """The bundled MiniLM, loaded once for the module: every annotator made here shares it."""
    import embeddings
    model = embeddings.load_embedder('all-MiniLM-L6-v2', 'cpu')
    with pytest.MonkeyPatch.context() as mp:  # annotators.py imports load_embedder from embeddings when it loads
        mp.setattr(embeddings, 'load_embedder', lambda name, dev: model)
        yield model


def test_zero_shot_labels(one_embedder):
    texts, topics = topic_docs(24, seed=1)
    ann = make_annotator('embed', {'embed_labels': LABELS, 'embed_key': 'subject', 'device': 'cpu',
                                   'embed_batch_size': 5})
    assert ann.fit(['ignored']) is ann  # zero-shot: nothing to fit
    out = ann(texts)
    assert all(z.startswith('subject:') and ' ' not in z for z in out)
    assert sum(z == f'subject:{t}' for z, t in zip(out, topics)) >= 22
    assert ann([]) == [] and ann(texts[:3]) == out[:3] and ann.stats['chunks'] == 27
    X = ann.embed(texts, progress=False)  # batched by length, returned in the order given
    assert all(np.allclose(X[i], ann.embed([texts[i]], progress=False)[0], atol=1e-5) for i in (0, 7, 23))
    spaced = make_annotator('embed', {'embed_labels': 'Fine arts: painting; Hard science: physics', 'device': 'cpu'})
    assert spaced(['A painting of a river.']) == ['topic:Fine_arts']  # '_' for spaces, default key


def test_clusters_recover_topics_deterministically(one_embedder):
    sample, _ = topic_docs(40, seed=2)
    texts, topics = topic_docs(20, seed=3)
    cfg = {'embed_clusters': 4, 'cluster_terms': 2, 'device': 'cpu', 'seed': 5}
    ann = make_annotator('embed', cfg)
    with pytest.raises(RuntimeError, match='fit'):
        ann(texts)
    out = ann.fit(sample)(texts)
    assert out == make_annotator('embed', cfg).fit(sample)(texts)  # same seed, same annotations
    assert len(set(ann.names)) == 4 and ann.stats['fit_chunks'] == 40
    for z, t in zip(out, topics):  # every cluster is one topic, named by that topic's words
        name = z.split(':', 1)[1]
        assert z.startswith('topic:') and all(w in TOPIC_WORDS[t].split() for w in name.split('_')), (z, t)
    assert len(set(out)) == 4
    # the fit sample's own chunks are not embedded again, and get the annotation a fresh embedding gives
    calls = []
    embed = ann.embed
    ann.embed = lambda texts, progress=True: calls.append(list(texts)) or embed(texts, progress)
    again = ann(sample[:6] + texts[:2])
    assert calls == [texts[:2]] and ann.stats['reused'] == 6
    fresh = make_annotator('embed', cfg).fit(sample)
    fresh.fitted = {}
    assert again == fresh(sample[:6] + texts[:2])
    with pytest.raises(UserError, match='embed_clusters=4 needs at least 4 distinct'):
        make_annotator('embed', cfg).fit(['a b c', 'a b c', 'd e f', '  '])


def test_cluster_names_are_distinctive_and_unique():
    texts = ['the guitar band album', 'guitar band tour', 'atom electron quantum', 'atom quantum laser',
             'river guitar', 'river lake']
    assert cluster_names(texts, [0, 0, 1, 1, 2, 2], 3, 2) == ['band_guitar', 'atom_quantum', 'river_lake']
    assert cluster_names(['blue whale', 'blue whale'], [0, 1], 2, 2) == ['blue_whale', 'blue_whale_1']
    assert cluster_names(['12 34', 'a'], [0, 1], 2, 3) == ['cluster0', 'cluster1']  # no words at all


# -----------------------------------------------------------------------------
# llm: parsing

def test_parse_answer_on_hand_made_outputs():
    p = lambda a: parse_answer(a, KEYS, 20)
    assert p('topic: Music\nentity: The Beatles\nlocation: Liverpool, England') == \
        'topic:Music entity:The_Beatles location:Liverpool,_England'
    # markdown, case, order of the keys, unknown keys, repeated keys, placeholders, a reasoning block
    assert p('<think>topic: wrong</think>\n- **Style**: formal.\n* Topic: "Jazz history"\n'
             'mood: happy\ntopic: Rock\nTime: N/A\nsentiment: none\n1. Domain = arts') == \
        'topic:Jazz_history domain:arts style:formal'
    assert p('topic: Music; entity: Elvis Presley') == 'topic:Music entity:Elvis_Presley'
    assert p('entity: ' + 'x' * 19 + ' yz') == 'entity:' + 'x' * 19  # capped, no trailing '_'
    assert p('key-less text\n\n: value\ntopic:\ntopic:  ') == ''
    assert p('') == '' and p('<think>still thinking') == ''
    assert parse_answer('Topic: Café au lait', ['Topic'], 40) == 'Topic:Café_au_lait'


# -----------------------------------------------------------------------------
# llm: a tiny random Llama and a BPE tokenizer trained here, saved and loaded like a hub model

@pytest.fixture(scope='module')
def tiny_llm(tmp_path_factory):
    """{'plain': dir, 'chat': dir}: the same tiny model, its tokenizer without and with a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [annotators.PROMPT, 'topic: music\nentity: the beatles'] + [' '.join(TOPIC_WORDS.values())]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=['<pad>', '<s>', '</s>'],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token='<s>', eos_token='</s>', pad_token='<pad>')
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    dirs = {}
    for kind in ('plain', 'chat'):
        dirs[kind] = str(tmp_path_factory.mktemp(kind))
        tok.chat_template = None if kind == 'plain' else \
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
        tok.save_pretrained(dirs[kind])
        model.save_pretrained(dirs[kind])
    return dirs


def llm(model_dir, cache_dir, **kw):
    return make_annotator('llm', dict(llm_model=model_dir, llm_cache_dir=str(cache_dir), device='cpu',
                                      llm_max_new_tokens=6, llm_batch_size=3, **kw))


def test_left_padded_batches_generate_as_one_at_a_time(tiny_llm):
    ann = llm(tiny_llm['plain'], '')
    prompts = ['A river.', 'A long text about football, tennis, a stadium and a coach of a team.', 'Atom.']
    assert ann.generate(prompts) == [ann.generate([p])[0] for p in prompts]
    chat = llm(tiny_llm['chat'], '')
    assert len(chat.generate(prompts)) == 3 and all(isinstance(a, str) for a in chat.generate(prompts))


def test_llm_cache_resumes_and_fallbacks_are_counted(tiny_llm, tmp_path):
    chunks = [f'Text {i} about a river and a mountain.' for i in range(5)] + ['Text 0 about a river and a mountain.']
    ann = llm(tiny_llm['plain'], tmp_path)
    sizes = []
    gen = ann.generate
    ann.generate = lambda prompts: sizes.append(len(prompts)) or gen(prompts)
    out = ann(chunks)
    assert sizes == [3, 2] and ann.stats['generated'] == 5 and ann.stats['chunks'] == 6  # the repeat: once
    answers = [json.loads(line) for line in open(ann.path)]
    assert len(answers) == 5 and os.path.dirname(ann.path) == str(tmp_path)
    parsed = [parse_answer(ann.cache[h], ann.keys, 32) for h in map(annotators.fingerprint, chunks)]
    assert out == [z or 'topic:unknown' for z in parsed] and out[0] == out[5]
    assert ann.stats['fallback'] == sum(not z for z in parsed)  # a random model: (nearly) all of them

    again = llm(tiny_llm['plain'], tmp_path)  # a resumed run generates nothing
    assert again(chunks) == out and again.stats['generated'] == 0 and again.stats['cached'] == 6
    with open(ann.path, 'r+b') as f:  # a run killed in the middle of its last append
        f.truncate(os.path.getsize(ann.path) - 7)
    torn = llm(tiny_llm['plain'], tmp_path, llm_fallback='')
    assert len(torn.cache) == 4 and open(ann.path, 'rb').read().endswith(b'\n')  # the torn line is gone
    assert torn(chunks) == [z for z in parsed] and torn.stats['generated'] == 1
    assert [json.loads(line) for line in open(ann.path)] == answers  # the same answer, appended again
    with open(ann.path, 'a') as f:
        f.write('not json\n')
    with pytest.raises(UserError, match='not a cache line'):
        llm(tiny_llm['plain'], tmp_path)


def test_llm_answers_are_parsed_and_a_new_prompt_config_is_a_new_cache(tiny_llm, tmp_path):
    ann = llm(tiny_llm['chat'], tmp_path, llm_keys='topic,entity', llm_fallback='topic:none_given')
    replies = iter(['Topic: Music\nEntity: The Beatles\nmood: happy', 'I cannot help with that.', ''])
    ann.generate = lambda prompts: [next(replies) for _ in prompts]
    out = ann(['one', 'two', 'three'])
    assert out == ['topic:Music entity:The_Beatles', 'topic:none_given', 'topic:none_given']
    assert ann.stats['fallback'] == 2 and ann.stats['generated'] == 3
    other = llm(tiny_llm['chat'], tmp_path, llm_keys='topic')
    assert other.path != ann.path and other.cache == {}
    long = ann.prompt('word ' * 1000)
    text = long.split('Text:\n')[1]  # cut to llm_max_chars, at a word boundary
    assert 1990 < len(text) <= 2000 and text.endswith('word') and 'keys: topic, entity\n' in long
