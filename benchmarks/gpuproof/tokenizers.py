"""Tokenizers of FLUX.1-dev's real vocabulary sizes, made here without a download.

Speed and memory depend on the vocabulary's size (the embedding tables) and on the sequence lengths (CLIP
pads to 77 tokens, T5 to `max_sequence_length`), not on which word maps to which id. So:

- CLIP: a byte-level BPE in CLIP's on-disk form (vocab.json + merges.txt, `</w>` word ends) with exactly
  49408 tokens: the 256 byte symbols, each again with `</w>`, merges of byte pairs in a fixed order, and
  `<|startoftext|>` = 49406, `<|endoftext|>` = 49407 as in CLIP's own vocabulary;
- T5: a Unigram (SentencePiece-like) tokenizer with 32000 pieces (`<pad>` 0, `</s>` 1, `<unk>` 2, then the
  printable characters and synthetic pieces) plus the 100 `<extra_id_N>` tokens: 32100, as T5's.

Both are saved with transformers' `save_pretrained`, so FluxPipeline.from_pretrained loads them like the
real ones; sd-scripts reads CLIP's vocab.json + merges.txt and T5's tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from zirelia_local.dataset.flux_dev_shapes import CLIP_VOCAB_SIZE, T5_EXTRA_IDS, T5_PIECES

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


def clip_vocab_and_merges(size: int = CLIP_VOCAB_SIZE) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A valid BPE vocabulary of exactly `size` tokens (the last two are CLIP's special tokens)."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [symbol + "</w>" for symbol in alphabet]
    merges: list[tuple[str, str]] = []
    wanted = size - len(CLIP_SPECIALS)
    # Every merge joins a byte symbol with another (word-final or not): "ab" / "ab</w>", each made once.
    for second in (*alphabet, *(symbol + "</w>" for symbol in alphabet)):
        for first in alphabet:
            if len(tokens) >= wanted:
                break
            merges.append((first, second))
            tokens.append(first + second)
        if len(tokens) >= wanted:
            break
    vocab = {token: index for index, token in enumerate(tokens)}
    for special in CLIP_SPECIALS:
        vocab[special] = len(vocab)
    assert len(vocab) == size, len(vocab)
    return vocab, merges


def build_clip_tokenizer(folder: Path, size: int = CLIP_VOCAB_SIZE) -> Path:
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(size)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def t5_pieces(count: int = T5_PIECES) -> list[tuple[str, float]]:
    """`count` Unigram pieces with scores: specials, the printable ASCII characters (alone and word-initial),
    then lowercase strings of two and three letters (alone and word-initial) in a fixed order."""
    import itertools
    import string

    characters = [chr(code) for code in range(33, 127)]
    pieces: list[str] = [*T5_SPECIALS, "\u2581"]
    pieces += characters + ["\u2581" + character for character in characters]
    for length in (2, 3):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            if len(pieces) >= count:
                break
            word = "".join(letters)
            pieces += [word, "\u2581" + word]
    pieces = pieces[:count]
    assert len(pieces) == count, len(pieces)
    return [(piece, 0.0 if index < len(T5_SPECIALS) else -1.0 - index / count) for index, piece in enumerate(pieces)]


def build_t5_tokenizer(folder: Path, pieces: int = T5_PIECES, extra_ids: int = T5_EXTRA_IDS) -> Path:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    unigram = Tokenizer(models.Unigram(t5_pieces(pieces), unk_id=T5_SPECIALS.index("<unk>")))
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    unigram.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", T5_SPECIALS.index("</s>"))]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=unigram,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=extra_ids,
        model_max_length=512,
    )
    tokenizer.save_pretrained(folder)
    return folder
