"""How much GPU memory a FLUX LoRA training run should need, from the model's real parameter counts.

    python -m zirelia_local.training.memory_estimate        # the table of docs/training-kohya.md

An estimate, not a measurement (benchmarks/gpu_proof.py measures): it adds up what sd-scripts'
`flux_train_network.py` keeps on the GPU, each term from the shapes of FLUX.1-dev's real transformer (built
on the meta device, so no memory is used):

- weights: the transformer at its storage width (bf16: 2 bytes a parameter; `--fp8_base`: 1), less the blocks
  `--blocks_to_swap N` keeps on the CPU (sd-scripts swaps N // 2 double blocks and (N - N // 2) * 2 single
  blocks, `library/flux_models.py`), plus one swapped double block in transit;
- LoRA: rank r on every module sd-scripts' `networks.lora_flux` trains (double blocks: fused qkv, proj, both
  MLP layers and the modulation of each stream; single blocks: linear1, linear2, modulation), r * (in + out)
  parameters each, in fp32 with fp32 gradients (8 bytes a parameter);
- optimizer state: AdamW two fp32 moments (8 bytes), AdamW8bit two 8-bit moments (2 bytes), Adafactor a
  factored second moment (rows + columns of each matrix, fp32);
- activations with gradient checkpointing: every block's input (batch x tokens x 3072, bf16) and the working
  set of the one block recomputed in the backward pass (its saved tensors and their gradients); tokens are
  (resolution / 16)^2 image tokens plus 512 T5 tokens;
- overhead: the CUDA context and library workspaces (0.5 GiB) and allocator slack (10% of the rest).

Before training, sd-scripts caches latents (the VAE alone on the GPU) and text-encoder outputs (T5-XXL and
CLIP-L on the GPU, the transformer moved to the CPU); the peak of that phase is estimated too, and the run's
estimated peak is the larger of the two phases. The estimate is meant to be within about 20% of a measured
peak; tests/test_full_size.py holds it against published figures (sd-scripts, fluxgym, ai-toolkit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zirelia_local.dataset import flux_dev_shapes
from zirelia_local.training.presets import MIN_GIB, PRESET_NAMES, VramPreset, get_preset

GIB = 1024**3
CONTEXT_BYTES = GIB // 2
ALLOCATOR_SLACK = 0.10
TEXT_TOKENS = 512
PIXELS_PER_TOKEN = 16  # VAE downsampling 8, then 2x2 latent patches
OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor")


@dataclass(frozen=True)
class FluxShape:
    """What the estimate needs to know of a FLUX transformer (read from a real module tree by `flux_shape`)."""

    num_double: int
    num_single: int
    double_block_params: int
    single_block_params: int
    other_params: int
    hidden: int
    mlp_hidden: int
    #: (in, out) of each module sd-scripts' LoRA trains in one double / one single block
    double_lora_modules: tuple[tuple[int, int], ...]
    single_lora_modules: tuple[tuple[int, int], ...]

    @property
    def total_params(self) -> int:
        return (
            self.other_params + self.num_double * self.double_block_params + self.num_single * self.single_block_params
        )

    def lora_matrices(self, rank: int, blocks: str = "all") -> list[tuple[int, int]]:
        """Shapes of every LoRA matrix (down: rank x in, up: out x rank) at `rank`."""
        modules = list(self.single_lora_modules) * self.num_single
        if blocks == "all":
            modules += list(self.double_lora_modules) * self.num_double
        return [shape for fan_in, fan_out in modules for shape in ((rank, fan_in), (fan_out, rank))]

    def lora_params(self, rank: int, blocks: str = "all") -> int:
        return sum(rows * cols for rows, cols in self.lora_matrices(rank, blocks))


def _params(module: Any) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _linear(layer: Any) -> tuple[int, int]:
    return (layer.in_features, layer.out_features)


def _fused(*layers: Any) -> tuple[int, int]:
    return (layers[0].in_features, sum(layer.out_features for layer in layers))


def flux_shape(transformer: Any) -> FluxShape:
    """The shape of a diffusers FluxTransformer2DModel (any device, meta included)."""
    double = transformer.transformer_blocks[0]
    single = transformer.single_transformer_blocks[0]
    attn = double.attn
    double_modules = (
        _fused(attn.to_q, attn.to_k, attn.to_v),  # img_attn_qkv
        _linear(attn.to_out[0]),  # img_attn_proj
        _linear(double.ff.net[0].proj),  # img_mlp_0
        _linear(double.ff.net[2]),  # img_mlp_2
        _linear(double.norm1.linear),  # img_mod_lin
        _fused(attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),  # txt_attn_qkv
        _linear(attn.to_add_out),  # txt_attn_proj
        _linear(double.ff_context.net[0].proj),  # txt_mlp_0
        _linear(double.ff_context.net[2]),  # txt_mlp_2
        _linear(double.norm1_context.linear),  # txt_mod_lin
    )
    single_modules = (
        _fused(single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp),  # linear1
        _linear(single.proj_out),  # linear2
        _linear(single.norm.linear),  # modulation_lin
    )
    num_double = len(transformer.transformer_blocks)
    num_single = len(transformer.single_transformer_blocks)
    double_params, single_params = _params(double), _params(single)
    return FluxShape(
        num_double=num_double,
        num_single=num_single,
        double_block_params=double_params,
        single_block_params=single_params,
        other_params=_params(transformer) - num_double * double_params - num_single * single_params,
        hidden=attn.to_q.out_features,
        mlp_hidden=single.proj_mlp.out_features,
        double_lora_modules=double_modules,
        single_lora_modules=single_modules,
    )


@dataclass(frozen=True)
class TrainingSetup:
    """The settings that decide the memory of a run (a preset's, or a published configuration's)."""

    resolution: int
    batch_size: int
    optimizer: str
    fp8_base: bool
    blocks_to_swap: int = 0
    rank: int = 32
    #: "all", or "single" (sd-scripts' `network_args = ["train_blocks=single"]`)
    lora_blocks: str = "all"
    #: bytes a parameter of the T5-XXL file (2: t5xxl_fp16; 1: an fp8 file)
    t5_bytes: float = 2.0
    #: text encoders stay on the GPU during training (no text-encoder cache, as ai-toolkit runs by default)
    text_encoders_on_gpu: bool = False

    @classmethod
    def from_preset(cls, preset: VramPreset, *, rank: int = 32) -> TrainingSetup:
        return cls(
            resolution=preset.resolution,
            batch_size=preset.batch_size,
            optimizer=preset.optimizer,
            fp8_base=preset.fp8_base,
            blocks_to_swap=preset.blocks_to_swap,
            rank=rank,
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the GPU; `peak` is the larger of the training phase and the caching phase."""

    weights: int
    lora: int
    optimizer: int
    activations: int
    text_encoders: int
    training: int
    caching: int

    @property
    def peak(self) -> int:
        return max(self.training, self.caching)


def swapped_blocks(shape: FluxShape, blocks_to_swap: int) -> tuple[int, int]:
    """(double, single) blocks sd-scripts keeps on the CPU for `--blocks_to_swap N`."""
    double = blocks_to_swap // 2
    single = (blocks_to_swap - double) * 2
    if double > shape.num_double - 2 or single > shape.num_single - 2:
        raise ValueError(f"blocks_to_swap {blocks_to_swap} swaps more blocks than sd-scripts allows")
    return double, single


def optimizer_bytes(optimizer: str, matrices: list[tuple[int, int]]) -> int:
    if optimizer == "AdamW":
        return 8 * sum(rows * cols for rows, cols in matrices)
    if optimizer == "AdamW8bit":
        return 2 * sum(rows * cols for rows, cols in matrices)
    if optimizer == "Adafactor":
        return 4 * sum(rows + cols for rows, cols in matrices)
    raise ValueError(f"no memory model for optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")


def tokens(resolution: int) -> int:
    return (resolution // PIXELS_PER_TOKEN) ** 2 + TEXT_TOKENS


def activation_bytes(shape: FluxShape, resolution: int, batch_size: int) -> int:
    """Checkpointed block inputs for every block, plus one block's recomputed working set and its gradients."""
    per_token_checkpoints = (shape.num_double + shape.num_single) * shape.hidden
    # A single block saves its normed input, q, k, v, attention output and output (6 x hidden) and the MLP
    # before and after its activation (2 x mlp); the backward pass holds gradients of the same size.
    per_token_working = 2 * (6 * shape.hidden + 2 * shape.mlp_hidden)
    return 2 * batch_size * tokens(resolution) * (per_token_checkpoints + per_token_working)


def _with_overhead(total: float) -> int:
    return int(total * (1 + ALLOCATOR_SLACK) + CONTEXT_BYTES)


def estimate_training_memory(
    shape: FluxShape,
    setup: TrainingSetup,
    *,
    t5_params: int = flux_dev_shapes.T5_XXL_PARAMS,
    clip_params: int = flux_dev_shapes.CLIP_L_PARAMS,
    t5_width: tuple[int, int] = (flux_dev_shapes.T5_XXL["d_model"], flux_dev_shapes.T5_XXL["d_ff"]),
) -> MemoryEstimate:
    """The memory `setup` should need on the GPU (see the module docstring for what is counted)."""
    weight_bytes = 1 if setup.fp8_base else 2
    double_swapped, single_swapped = swapped_blocks(shape, setup.blocks_to_swap)
    resident = shape.total_params - double_swapped * shape.double_block_params
    resident -= single_swapped * shape.single_block_params
    if setup.blocks_to_swap:
        resident += shape.double_block_params  # the block in transit
    weights = resident * weight_bytes
    matrices = shape.lora_matrices(setup.rank, setup.lora_blocks)
    lora = 8 * sum(rows * cols for rows, cols in matrices)
    optimizer = optimizer_bytes(setup.optimizer, matrices)
    activations = activation_bytes(shape, setup.resolution, setup.batch_size)
    text_weights = int(t5_params * setup.t5_bytes + clip_params * 2)
    text_encoders = text_weights if setup.text_encoders_on_gpu else 0
    training = _with_overhead(weights + lora + optimizer + activations + text_encoders)
    # Caching: text encoders alone (one batch of 512 T5 tokens through the gated MLP), then the VAE alone
    # (about four 128-channel feature maps at full resolution live at once; weights are negligible).
    d_model, d_ff = t5_width
    text_phase = text_weights + 2 * setup.batch_size * TEXT_TOKENS * (2 * d_ff + 4 * d_model)
    vae_phase = 2 * setup.batch_size * setup.resolution**2 * 128 * 4
    caching = _with_overhead(max(text_phase, vae_phase))
    return MemoryEstimate(weights, lora, optimizer, activations, text_encoders, training, caching)


@dataclass(frozen=True)
class PublishedSetup:
    """A configuration someone published as working on a card of `card_gb` GB."""

    source: str
    setup: TrainingSetup
    card_gb: int


#: Published FLUX.1-dev LoRA configurations and the card each is said to work on. Ranks are the sources' own.
PUBLISHED: tuple[PublishedSetup, ...] = (
    PublishedSetup(
        "sd-scripts README (FLUX.1 LoRA sample command: fp8_base, adamw8bit, 1024 px, batch 2, dim 4)",
        TrainingSetup(1024, 2, "AdamW8bit", fp8_base=True, rank=4),
        24,
    ),
    PublishedSetup(
        "sd-scripts README: 16 GB with batch size 1 and blocks_to_swap (8 assumed)",
        TrainingSetup(1024, 1, "AdamW8bit", fp8_base=True, blocks_to_swap=8, rank=4),
        16,
    ),
    PublishedSetup(
        "sd-scripts README: 12 GB with blocks_to_swap 16 and 8-bit AdamW",
        TrainingSetup(1024, 1, "AdamW8bit", fp8_base=True, blocks_to_swap=16, rank=4),
        12,
    ),
    PublishedSetup(
        "sd-scripts README: 10 GB with 22 blocks swapped and an fp8 T5-XXL",
        TrainingSetup(1024, 1, "AdamW8bit", fp8_base=True, blocks_to_swap=22, rank=4, t5_bytes=1.0),
        10,
    ),
    PublishedSetup(
        "fluxgym 20G (fp8_base, adamw8bit, 512 px, batch 1, dim 4)",
        TrainingSetup(512, 1, "AdamW8bit", fp8_base=True, rank=4),
        20,
    ),
    PublishedSetup(
        "fluxgym 16G (fp8_base, Adafactor, 512 px, batch 1, dim 4)",
        TrainingSetup(512, 1, "Adafactor", fp8_base=True, rank=4),
        16,
    ),
    PublishedSetup(
        "fluxgym 12G (+ split_mode = blocks_to_swap 18, train_blocks=single)",
        TrainingSetup(512, 1, "Adafactor", fp8_base=True, blocks_to_swap=18, rank=4, lora_blocks="single"),
        12,
    ),
    PublishedSetup(
        "ai-toolkit train_lora_flux_24gb.yaml (8-bit transformer, adamw8bit, up to 1024 px, batch 1, rank 16, "
        "text encoders kept on the GPU in 8 bits)",
        TrainingSetup(1024, 1, "AdamW8bit", fp8_base=True, rank=16, t5_bytes=1.0, text_encoders_on_gpu=True),
        24,
    ),
)


def preset_estimates(shape: FluxShape, *, rank: int = 32) -> dict[str, MemoryEstimate]:
    """The estimate of every FLUX VRAM preset at LoRA rank `rank`."""
    return {
        name: estimate_training_memory(shape, TrainingSetup.from_preset(get_preset("flux", name), rank=rank))
        for name in PRESET_NAMES
    }


def format_tables(shape: FluxShape, *, rank: int = 32) -> str:
    """Markdown tables: the presets' estimates, then the published configurations'."""
    lines = [
        f"FLUX.1-dev: {shape.total_params / 1e9:.2f}B transformer parameters, LoRA rank {rank} "
        f"({shape.lora_params(rank) / 1e6:.0f}M parameters); GiB",
        "",
        "| preset | weights | LoRA + optimizer | activations | training | caching | estimated peak | card (torch GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, estimate in preset_estimates(shape, rank=rank).items():
        gib = {key: value / GIB for key, value in vars(estimate).items()}
        lines.append(
            f"| {name} | {gib['weights']:.1f} | {gib['lora'] + gib['optimizer']:.1f} | {gib['activations']:.1f} | "
            f"{gib['training']:.1f} | {gib['caching']:.1f} | **{estimate.peak / GIB:.1f}** | >= {MIN_GIB[name]:g} |"
        )
    lines += ["", "| published configuration | card | estimated peak (GiB) |", "|---|---|---|"]
    for published in PUBLISHED:
        estimate = estimate_training_memory(shape, published.setup)
        lines.append(f"| {published.source} | {published.card_gb} GB | {estimate.peak / GIB:.1f} |")
    return "\n".join(lines)


def main() -> None:
    print(format_tables(flux_shape(flux_dev_shapes.meta_transformer())))


if __name__ == "__main__":
    main()
