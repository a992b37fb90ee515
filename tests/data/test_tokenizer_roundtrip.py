"""Property tests: a trained byte-level tokenizer round-trips any Unicode text, before and after saving."""

import pytest
from datahelp import STORIES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketlm.data.tokenizer import SPECIAL_TOKENS, encode_document, load_tokenizer, train_tokenizer

SPECIAL_LIKE = [*SPECIAL_TOKENS, "<|", "|>", "<|endoftext", "endoftext|>", "<s>", "</s>", "<unk>", "[CLS]",
                "<|im_start|>user\n", " ", "  ", "\n", "\r\n", "\t", "\x00", "\u200d", "\ufeff", "é", "e\u0301"]
characters = st.characters(blacklist_categories=["Cs"])  # lone surrogates cannot be UTF-8 encoded
texts = st.lists(st.one_of(st.text(characters), st.sampled_from(SPECIAL_LIKE)), max_size=12).map("".join)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    tok = train_tokenizer(STORIES * 3 + ["Grüße, 東京, Ελληνικά, русский, عربى, 🙂🚀"], 400)
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(str(path))
    return tok, load_tokenizer(path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_any_text_round_trips_and_reloaded_tokenizer_agrees(tokenizers, text):
    tok, reloaded = tokenizers
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert reloaded.encode(text, add_special_tokens=False) == ids
    assert reloaded.decode(ids) == text
    doc = encode_document(reloaded, text)
    assert doc[0] == reloaded.bos_token_id and doc[1:] == ids


@settings(max_examples=25, deadline=None)
@given(corpus=st.lists(texts, min_size=1, max_size=6), probe=texts)
def test_tokenizers_trained_on_arbitrary_text_round_trip(corpus, probe):
    tok = train_tokenizer(corpus, 300)
    assert len(tok) <= 300
    for text in [*corpus, probe]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_specials_are_single_tokens_and_chat_template_is_saved(tokenizers):
    tok, reloaded = tokenizers
    for special in SPECIAL_TOKENS:
        assert len(reloaded.encode(special, add_special_tokens=False)) == 1
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert reloaded.apply_chat_template(messages, tokenize=False) == tok.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("unk", ["<unk>", None])
def test_stop_tokens_are_eos_and_im_end_only_when_the_vocabulary_has_it(tokenizers, unk):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from pocketlm.data.tokenizer import IM_END, stop_token_ids
    _, reloaded = tokenizers
    assert stop_token_ids(reloaded) == [reloaded.eos_token_id, reloaded.convert_tokens_to_ids(IM_END)]
    vocab = {"</s>": 0, "hello": 1, **({unk: 2} if unk else {})}
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=unk)),
                                    eos_token="</s>", unk_token=unk)
    assert stop_token_ids(plain) == [0]  # no <|im_end|>: not the unknown token's id either
