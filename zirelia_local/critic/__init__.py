"""The critic: judge images of the persona (identity, prompt adherence, defects), retry rejected ones with
adjusted prompts, and choose which epoch's LoRA is the persona.

Heavy imports (torch, open_clip, diffusers) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zirelia_local.config import ZireliaConfig
    from zirelia_local.critic.run import CriticResult, EvaluationRenderer

__all__ = ["run_critic"]


def run_critic(config: ZireliaConfig, *, renderer: EvaluationRenderer | None = None) -> CriticResult:
    """Score every saved epoch (retrying rejected images), pick the best one, write best.safetensors."""
    from zirelia_local.critic.run import run_critic as run

    return run(config, renderer=renderer)
