"""formats.py: annotations and the exact loss masks of standard and anchored SFT, position by position."""
import tiktoken

from formats import (ANN, ASSISTANT, BOS, END, IGNORE, SPECIALS, TEXT, USER, chat_prefix,
                     encode_annotation, format_annotation, parse_annotation, pretrain_doc, sft_example)

# byte-level tokenizer: one ASCII character = one token, so positions are easy to reason about
SP = {s: 256 + i for i, s in enumerate(SPECIALS)}
ENC = tiktoken.Encoding('bytes', pat_str=r"[\s\S]", mergeable_ranks={bytes([i]): i for i in range(256)},
                        special_tokens=SP)


def test_annotation_roundtrip():
    z = format_annotation([('topic', 'Arts'), ('entity', 'Mona Lisa'), ('description', ''), ('x', ' a  b ')])
    assert z == 'topic:Arts entity:Mona_Lisa x:a_b'
    assert parse_annotation(z) == [('topic', 'Arts'), ('entity', 'Mona_Lisa'), ('x', 'a_b')]
    assert parse_annotation('novalue:  junk') == [('novalue', '')]


def test_encode_annotation_marks_values():
    ids, is_value = encode_annotation(ENC, 'ab:cd e:f')
    assert ENC.decode(ids) == 'ab:cd e:f'
    assert [ENC.decode([i]) for i, v in zip(ids, is_value) if v] == ['c', 'd', 'f']


def test_pretrain_sequences():
    plain = pretrain_doc(ENC, SP, ['x1', 'x2'])
    assert plain == [SP[BOS]] + ENC.encode_ordinary('x1\n\nx2')
    ann = pretrain_doc(ENC, SP, ['x1', 'x2'], ['k:a', 'k:b'])
    assert ann == ([SP[BOS], SP[ANN]] + ENC.encode_ordinary('k:a') + [SP[TEXT]] + ENC.encode_ordinary('x1')
                   + [SP[ANN]] + ENC.encode_ordinary('k:b') + [SP[TEXT]] + ENC.encode_ordinary('\n\nx2'))


def supervised(ids, targets):
    """The tokens that are targets somewhere: targets[i] labels ids[i + 1]."""
    assert len(ids) == len(targets) and targets[-1] == IGNORE
    return [(i + 1, t) for i, t in enumerate(targets) if t != IGNORE]


def test_standard_sft_mask():
    ids, targets = sft_example(ENC, SP, 'hi', 'yo')
    assert ids == [SP[BOS], SP[USER], ord('h'), ord('i'), SP[ASSISTANT], ord('y'), ord('o'), SP[END]]
    for i, t in enumerate(targets[:-1]):
        assert t == (ids[i + 1] if i + 1 >= 5 else IGNORE)  # only y and <|end|>


def test_anchored_sft_mask_position_by_position():
    ids, targets = sft_example(ENC, SP, 'hi', 'yo', annotation='k:ab')
    expect_ids = [SP[BOS], SP[USER], ord('h'), ord('i'), SP[ASSISTANT], SP[ANN],
                  ord('k'), ord(':'), ord('a'), ord('b'), SP[TEXT], ord('y'), ord('o'), SP[END]]
    assert ids == expect_ids
    # ordinary row: prompt, <|ann|>, keys, values, <|text|> all masked; y and <|end|> supervised
    expected = [IGNORE] * 10 + [ord('y'), ord('o'), SP[END], IGNORE]
    assert targets == expected
    # key row: <|ann|>, the key 'k', ':' and <|text|> are supervised too; the value 'ab' stays masked
    _, key_targets = sft_example(ENC, SP, 'hi', 'yo', annotation='k:ab', key_row=True)
    expected_key = [IGNORE] * 4 + [SP[ANN], ord('k'), ord(':'), IGNORE, IGNORE, SP[TEXT],
                                   ord('y'), ord('o'), SP[END], IGNORE]
    assert key_targets == expected_key
    assert supervised(ids, key_targets)[0] == (5, SP[ANN])


def test_anchored_multi_field_key_row_masks_only_values():
    ids, targets = sft_example(ENC, SP, 'q', 'r', annotation='a:x b:yz', key_row=True)
    sup = {ENC.decode([t]) if t < 256 else t for _, t in supervised(ids, targets)}
    assert {'a', ':', ' ', 'b', 'r'} <= sup
    assert not {'x', 'y', 'z', 'q'} & sup


def test_chat_prefix():
    assert chat_prefix(ENC, SP, 'q', anchored=False) == [SP[BOS], SP[USER], ord('q'), SP[ASSISTANT]]
    assert chat_prefix(ENC, SP, 'q', anchored=True)[-1] == SP[ANN]
