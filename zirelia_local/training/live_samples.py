"""The diffusers backend's sample images: the sample prompts drawn at an epoch's end with the model in memory.

This is what sd-scripts does with `--sample_every_n_epochs`, for the built-in trainer. The prompts of
`sample_prompts.txt` (`dataset.sample_prompts`) are encoded once by the text encoders that encode the
training captions, and cached in `train/cache/samples/` (so a resumed run does not load T5 again for them);
the VAE is loaded alone, on the first sampled epoch (about 170 MB for FLUX.1). At the end of every
`sample_every_n_epochs`-th epoch a `FluxPipeline` around the training transformer (its LoRA on, eval mode,
no gradients) draws them with their fixed seeds, and they are written under sd-scripts' names into
`train/sample/`, where the live curve (`live_identity.LiveCurve`) judges them. Drawing uses its own seeded
generators, so the training's own random draws, and a resumed run's weights, do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.files import atomic_write_bytes, png_bytes
from zirelia_local.training.flux_cache import _load, _save, text_key
from zirelia_local.training.live_identity import SAMPLE_DIR, LiveCurve, sample_file_name

if TYPE_CHECKING:
    import torch

    from zirelia_local.dataset import SamplePrompt
    from zirelia_local.training.diffusers_plan import DiffusersTrainPlan
    from zirelia_local.training.flux_cache import FluxEncoder

SAMPLES_CACHE = "samples"


class LiveSamples:
    """Draws the sample prompts after an epoch and lets the live curve judge them; see the module docstring."""

    def __init__(
        self,
        config: ZireliaConfig,
        plan: DiffusersTrainPlan,
        out_dir: Path,
        prompts: list[SamplePrompt],
        embeds: list[tuple[torch.Tensor, torch.Tensor]],
        curve: LiveCurve,
    ) -> None:
        self.config = config
        self.plan = plan
        self.out_dir = out_dir
        self.prompts = prompts
        self.embeds = embeds
        self.curve = curve
        self._pipe: Any = None

    @classmethod
    def prepare(
        cls,
        config: ZireliaConfig,
        plan: DiffusersTrainPlan,
        out_dir: Path,
        open_encoder: Callable[[], FluxEncoder],
        curve: LiveCurve | None,
    ) -> LiveSamples | None:
        """Encode the sample prompts (from the cache when it has them); None when there is no live curve."""
        if curve is None:
            return None
        from zirelia_local.dataset import sample_prompts

        prompts = sample_prompts(config)
        folder = out_dir / "cache" / SAMPLES_CACHE
        keys = [
            text_key(p.prompt, max_sequence_length=plan.max_sequence_length, model_id=plan.model_id) for p in prompts
        ]
        embeds = []
        for sample, key in zip(prompts, keys, strict=True):
            path = folder / f"{key}.safetensors"
            loaded = _load(path) if path.is_file() else None
            if loaded is None or {"prompt_embeds", "pooled_prompt_embeds"} - set(loaded):
                prompt_embeds, pooled = open_encoder().encode_prompts([sample.prompt])
                loaded = {"prompt_embeds": prompt_embeds[0].cpu(), "pooled_prompt_embeds": pooled[0].cpu()}
                _save(path, loaded, {"prompt": sample.prompt, "model": plan.model_id})
            embeds.append((loaded["prompt_embeds"], loaded["pooled_prompt_embeds"]))
        return cls(config, plan, out_dir, prompts, embeds, curve)

    def _pipeline(self, transformer: Any) -> Any:
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline

        from zirelia_local.training.diffusers_data import load_component

        if self._pipe is None:
            import torch

            source, dtype = self.plan.model_source, getattr(torch, self.plan.weight_dtype)
            vae = load_component(AutoencoderKL.from_pretrained, source, self.config, subfolder="vae", dtype=dtype)
            scheduler = load_component(
                FlowMatchEulerDiscreteScheduler.from_pretrained, source, self.config, subfolder="scheduler"
            )
            self._pipe = FluxPipeline(
                scheduler=scheduler,
                vae=vae.to(self.plan.device),
                text_encoder=None,
                tokenizer=None,
                text_encoder_2=None,
                tokenizer_2=None,
                transformer=transformer,
            )
            self._pipe.set_progress_bar_config(disable=True)
        self._pipe.transformer = transformer
        return self._pipe

    def draw(
        self, transformer: Any, epoch: int, autocast: Callable[[], AbstractContextManager] = nullcontext
    ) -> list[Path]:
        """Draw every sample prompt with `transformer` as it is now (under `autocast()`, the training's mixed
        precision); write and return the files."""
        import torch

        from zirelia_local.dataset import sample_size

        critic, generator = self.config.critic, self.config.generator
        pipe = self._pipeline(transformer)
        size = sample_size(self.config)
        was_training = transformer.training
        transformer.eval()
        written = []
        try:
            for sample, (prompt_embeds, pooled) in zip(self.prompts, self.embeds, strict=True):
                with torch.no_grad(), autocast():
                    image = pipe(
                        prompt_embeds=prompt_embeds.unsqueeze(0).to(self.plan.device, transformer.dtype),
                        pooled_prompt_embeds=pooled.unsqueeze(0).to(self.plan.device, transformer.dtype),
                        height=size,
                        width=size,
                        num_inference_steps=critic.steps or generator.steps,
                        guidance_scale=critic.guidance if critic.guidance is not None else generator.guidance,
                        generator=torch.Generator().manual_seed(sample.seed),
                    ).images[0]
                name = sample_file_name(self.config.lora_name, epoch, sample.index, sample.seed)
                metadata = {"prompt": sample.prompt, "seed": str(sample.seed), "epoch": str(epoch)}
                written.append(atomic_write_bytes(self.out_dir / SAMPLE_DIR / name, png_bytes(image, metadata)))
        finally:
            if was_training:
                transformer.train()
        return written

    def after_epoch(
        self, transformer: Any, epoch: int, *, saved: bool, autocast: Callable[[], AbstractContextManager] = nullcontext
    ) -> bool:
        """At an epoch's end (after its save): draw and judge the samples if this epoch is sampled; True when
        training should stop here (a stop was requested and this epoch is saved)."""
        if epoch % self.config.train.sample_every_n_epochs == 0:
            self.draw(transformer, epoch, autocast)
            self.curve.poll(force=True)
        if self.curve.stop_epoch(epoch if saved else None) is None:
            return False
        from zirelia_local.training.live_identity import record_early_stop

        record_early_stop(self.config, self.out_dir, self.curve.metrics_path, self.curve.stop_request or {}, epoch)
        return True
