"""Tokenizer loading, plus a built-in byte-level tokenizer for tiny offline models and tests."""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

BYTES = "bytes"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens + <|endoftext|> (256), <|pad|> (257), <|endofmedia|> (258); needs no files."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   additional_special_tokens=["<|endofmedia|>"])


def load_tokenizer(name_or_path: str, gguf_file: str | None = None):
    tokenizer = byte_tokenizer() if name_or_path == BYTES else AutoTokenizer.from_pretrained(
        name_or_path, **({"gguf_file": gguf_file} if gguf_file else {})
    )
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
