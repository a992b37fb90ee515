"""Byte-level BPE tokenizers: train one on the user's text, or reuse an existing one.

pocketlm's own tokenizers use GPT-2's byte-level pre-tokenizer (the same regex llama.cpp calls
"gpt-2"), no normaliser, and four special tokens, so every Unicode string round-trips and the
GGUF export can describe the tokenizer to llama.cpp exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pocketlm.data.options import MIN_VOCAB as OPTIONS_MIN_VOCAB
from pocketlm.errors import UserError

BOS = "<|endoftext|>"  # also separates documents in packed token streams
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, IM_START, IM_END, PAD]

# ChatML, the format SmolLM2 and Qwen2.5 use. Assistant turns end with <|im_end|>, which is one of
# the model's end-of-sequence tokens, so a chat model learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
assert MIN_VOCAB == OPTIONS_MIN_VOCAB, "pocketlm.data.options.MIN_VOCAB names the same minimum"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, length: int | None = None, show_progress: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of `vocab_size` tokens (specials included) on `texts`."""
    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
        max_token_length=32,  # llama.cpp's detokenizer (llama-cpp-python) assumes tokens of at most 32 bytes
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
        add_bos_token=True,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a Hugging Face model or tokenizer directory, or a GGUF model file (offline)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such tokenizer directory")
    try:
        if path.is_file() and path.suffix.lower() == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad directory
        raise UserError(f"{path}: cannot load a tokenizer from it ({type(e).__name__}: {e})") from None


def doc_separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token put before every document in a packed stream: BOS if the tokenizer has one, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise UserError("the tokenizer has neither a BOS nor an EOS token to separate documents")


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end generation: EOS, and <|im_end|> when the vocabulary has it."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    # a direct lookup: get_vocab() builds the whole vocabulary dict (23 ms for SmolLM2's 49k tokens), and
    # this runs once per training example
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and tokenizer.convert_ids_to_tokens(im_end) != IM_END:
        im_end = None  # not in the vocabulary: the lookup gave the unknown token
    if im_end is not None and im_end not in ids:
        ids.append(int(im_end))
    return ids


def encode_document(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids for one document, preceded by the document separator, without other specials."""
    return [doc_separator_id(tokenizer)] + tokenizer.encode(text, add_special_tokens=False)
