"""The embedded default models: tiny, randomly initialised but real FLUX pipelines.

No one can download FLUX.1-dev in CI or on a machine without a hub account, yet every stage must run
for real. This module builds a pipeline from the real diffusers / transformers classes (FluxTransformer2DModel,
AutoencoderKL, CLIPTextModel, T5EncoderModel) with tokenizers trained locally by the `tokenizers` library,
saves it with `save_pretrained` into a cache folder, and from then on it loads like any other model folder.

`builtin:tiny-flux` is saved as a `FluxPipeline` (text to image), `builtin:tiny-flux-kontext` as a
`FluxKontextPipeline` (image + instruction to image): FLUX.1 Kontext [dev] has the same components and the
same transformer class as FLUX.1-dev, with weights trained to read the input image's tokens beside the
noise. The tiny Kontext gets its own random transformer (another seed), like the real one has its own weights.

The build is deterministic (fixed seeds, fixed corpus) and atomic (built in a temporary folder, then renamed),
so concurrent first runs or a kill mid-build never leave a half-written model behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.paths import describe_os_error, display_path

BUILTIN_PREFIX = "builtin:"
TINY_FLUX_NAME = "tiny-flux"
TINY_KONTEXT_NAME = "tiny-flux-kontext"
# Bump when the architecture or the tokenizer corpus changes, so old caches are not reused.
TINY_FLUX_VERSION = 2
# Built-in name -> (diffusers pipeline class saved into model_index.json, seed of the transformer's weights).
_BUILTINS = {TINY_FLUX_NAME: ("FluxPipeline", 0), TINY_KONTEXT_NAME: ("FluxKontextPipeline", 10)}

# Sizes chosen to satisfy FLUX's consistency rules while staying under a megabyte:
# transformer in_channels = 4 x VAE latent channels; sum(axes_dims_rope) = attention_head_dim;
# joint_attention_dim = T5 d_model; pooled_projection_dim = CLIP hidden size.
_TEXT_HIDDEN = 32
_LATENT_CHANNELS = 16

_CORPUS_WORDS = """
a an the of in on at with and wearing photo portrait close up shot view face woman man person young old
year years 23-year-old 30-year-old hair eyes skin freckles smile smiling laughing serious neutral thoughtful
surprised calm confident soft hard golden hour studio light lighting daylight overcast window neon night
evening morning sunset backlit rim dramatic natural warm cool cafe street park beach office kitchen library
forest city rooftop garden living room studio backdrop bookstore market mountain lake denim jacket sweater
dress shirt blouse coat hoodie t-shirt suit leather linen white black blue red green brown auburn blonde dark
long short shoulder-length curly straight wavy freckled green-eyed brown-eyed front facing camera three-quarter
profile side waist-up full body head and shoulders looking away over the shoulder high angle low angle
""".split()


# Every printable ASCII character, so no prompt character maps to <unk>.
_ALPHABET = "".join(chr(code) for code in range(33, 127))


def cache_root() -> Path:
    """Where zirelia-local keeps things it builds itself (ZIRELIA_CACHE, else XDG cache)."""
    if os.environ.get("ZIRELIA_CACHE"):
        return Path(os.environ["ZIRELIA_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "zirelia-local"


def is_builtin(model: str) -> bool:
    return model.startswith(BUILTIN_PREFIX)


def resolve_builtin(model: str) -> Path:
    """Return the local folder of a `builtin:` model, building it on first use."""
    name = model[len(BUILTIN_PREFIX) :]
    if name not in _BUILTINS:
        raise ZireliaError(
            f"unknown built-in model {model!r}",
            hint="the built-in models are " + ", ".join(f"'{BUILTIN_PREFIX}{known}'" for known in _BUILTINS),
        )
    return ensure_builtin(name)


def ensure_tiny_flux(root: Path | None = None) -> Path:
    """Build the tiny FLUX pipeline into the cache once; return its folder."""
    return ensure_builtin(TINY_FLUX_NAME, root)


def ensure_tiny_kontext(root: Path | None = None) -> Path:
    """Build the tiny FLUX.1 Kontext pipeline into the cache once; return its folder."""
    return ensure_builtin(TINY_KONTEXT_NAME, root)


def ensure_builtin(name: str, root: Path | None = None) -> Path:
    """Build the built-in pipeline `name` into the cache once; return its folder."""
    root = Path(root) if root is not None else cache_root()
    target = root / f"{name}-v{TINY_FLUX_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    staging = _staging_folder(root, target.name)
    try:
        build_tiny_flux(staging, name=name)
        try:
            os.replace(staging, target)
        except OSError:
            # Another process finished first (the target exists and is not empty): use theirs.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _staging_folder(root: Path, name: str) -> Path:
    """A fresh folder in the cache to build into; a ZireliaError naming the cache folder when it cannot be one."""
    try:
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(root))
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # the CLI says the disk is full
        why = {errno.ENOTDIR: "is a file, not a folder", errno.ENOENT: "cannot be created there"}.get(
            error.errno or 0, describe_os_error(error)
        )
        raise ZireliaError(
            f"cannot build {BUILTIN_PREFIX}{TINY_FLUX_NAME} in the cache folder {display_path(root)}: {why}",
            hint="set ZIRELIA_CACHE to a folder you can write to (default: ~/.cache/zirelia-local)",
        ) from None


def _train_clip_tokenizer(folder: Path) -> None:
    """A byte-level BPE in CLIP's on-disk format (vocab.json + merges.txt, `</w>` word ends)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    # Keep vocab.json + merges.txt beside tokenizer.json: older loaders (transformers 4.x, as pinned by
    # sd-scripts) read CLIP's tokenizer from these two files.
    bpe.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [
        tuple(line.split(" "))
        for line in (folder / "merges.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer.save_pretrained(folder)


def _train_t5_tokenizer(folder: Path) -> None:
    """A Unigram tokenizer in T5's fast format (tokenizer.json with <pad>, </s>, <unk>)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=1000,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(_ALPHABET),
        show_progress=False,
    )
    unigram.train_from_iterator(_corpus(), trainer=trainer)
    unigram.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", unigram.token_to_id("</s>"))]
    )
    tokenizer = T5TokenizerFast(
        tokenizer_object=unigram,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=512,
    )
    tokenizer.save_pretrained(folder)


def _corpus() -> list[str]:
    # Fixed sentences so the trained vocabularies are identical on every machine; commas as in prompts.
    words = _CORPUS_WORDS
    lines = [", ".join(" ".join(words[j : j + 3]) for j in range(i, i + 12, 3)) for i in range(0, len(words), 5)]
    return [*lines, _ALPHABET, " ".join(_ALPHABET)] * 4


def build_tiny_flux(folder: Path, name: str = TINY_FLUX_NAME) -> Path:
    """Build and save the tiny pipeline `name` into `folder` (deterministic, CPU, no network)."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer_2").mkdir()
    _train_clip_tokenizer(folder / "tokenizer")
    _train_t5_tokenizer(folder / "tokenizer_2")

    from transformers import CLIPTokenizer, T5TokenizerFast

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    tokenizer_2 = T5TokenizerFast.from_pretrained(folder / "tokenizer_2")

    pipeline_class, transformer_seed = _BUILTINS[name]
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(transformer_seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * _LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=_TEXT_HIDDEN,
            pooled_projection_dim=_TEXT_HIDDEN,
            guidance_embeds=True,
            axes_dims_rope=[4, 4, 8],
        )
        torch.manual_seed(1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[8, 8, 16, 16],
            layers_per_block=1,
            latent_channels=_LATENT_CHANNELS,
            norm_num_groups=8,
            sample_size=64,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=_TEXT_HIDDEN,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                projection_dim=_TEXT_HIDDEN,
            )
        )
        torch.manual_seed(3)
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=_TEXT_HIDDEN,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
                decoder_start_token_id=tokenizer_2.pad_token_id,
            )
        )
    finally:
        torch.random.set_rng_state(generator_state)

    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = getattr(diffusers, pipeline_class)(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "zirelia_tiny_flux.json").write_text(
        json.dumps({"name": name, "version": TINY_FLUX_VERSION}, indent=2) + "\n"
    )
    return folder
