"""Tokenizers for decoders built from scratch, and the default chat template.

A pretrained decoder brings its own tokenizer. A new decoder (``decoder.init``) needs one made
here, offline: byte-level BPE, either bytes only (``decoder.tokenizer: bytes``; nothing to train,
fine for tests) or trained on a corpus (``build_tokenizer(corpus, vocab_size)``), as the starter
model does.
"""

from __future__ import annotations

from typing import Iterable

# ChatML, as used by Qwen2 and many others. Messages are rendered verbatim: placeholders such as
# <image> stay in the text and are replaced by feature tokens later.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EOS = "<|endoftext|>"
CHAT_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 256, placeholders: Iterable[str] = ()):
    """A byte-level BPE tokenizer as a transformers fast tokenizer, with a ChatML template.

    :param corpus: texts to learn merges from; None gives a bytes-only tokenizer (no merges).
    :param vocab_size: target size including the 256 bytes and the special tokens.
    :param placeholders: modality placeholder tokens (``<image>``...) to add as special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS, *CHAT_SPECIAL_TOKENS, *placeholders]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, len(alphabet) + len(specials)),
                                  special_tokens=specials, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(corpus) if corpus is not None else [], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=list(CHAT_SPECIAL_TOKENS))
    fast.chat_template = CHATML_TEMPLATE
    return fast
