"""The shapes of FLUX.1-dev's four models, as constructor arguments of the diffusers / transformers classes.

Nothing here holds weights. The full-size checks (tests/test_full_size.py), the memory estimator
(`training/memory_estimate.py`) and the GPU proof (benchmarks/gpu_proof.py, which builds random models of
these shapes on the GPU) all take the shapes from this one place. The values are those of the
black-forest-labs/FLUX.1-dev repository's `config.json` files (transformer, text_encoder = CLIP-L,
text_encoder_2 = T5-XXL encoder, vae), and match the fixed configs sd-scripts' `library/flux_utils.py` loads.
"""

from __future__ import annotations

from typing import Any

#: FluxTransformer2DModel: 19 double-stream and 38 single-stream blocks, 24 heads of 128 (inner width 3072).
TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}

#: T5EncoderModel of T5-v1.1-XXL (gated GELU, untied embeddings), the encoder half only.
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "layer_norm_epsilon": 1e-6,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

#: CLIPTextModel of CLIP ViT-L/14's text tower. eos_token_id 2 is what FLUX.1-dev's config says: transformers
#: then pools at the highest token id, which is <|endoftext|> (49407) in CLIP's vocabulary.
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

#: AutoencoderKL with 16 latent channels, no quant convs (FLUX's `ae.safetensors` in diffusers form).
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.1159,
    "scaling_factor": 0.3611,
}

#: FlowMatchEulerDiscreteScheduler as FLUX.1-dev ships it (resolution-dependent shift).
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

#: Tokenizer sizes of the real models: CLIP's BPE has 49408 tokens; T5's SentencePiece has 32000 pieces plus
#: 100 `<extra_id_N>` tokens (the model's embedding has 32128 rows, padded).
CLIP_VOCAB_SIZE = 49408
T5_PIECES = 32000
T5_EXTRA_IDS = 100

#: Published parameter counts, for the tests: 11.9B transformer, 4.76B T5-XXL encoder, 123M CLIP-L text.
TRANSFORMER_PARAMS = 11_901_408_320
T5_XXL_PARAMS = 4_762_310_656
CLIP_L_PARAMS = 123_060_480


def meta_transformer() -> Any:
    """FLUX.1-dev's FluxTransformer2DModel on the meta device: real module tree and shapes, no memory."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**TRANSFORMER)


def parameter_count(module: Any) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
