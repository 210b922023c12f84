"""Stage 4, the critic: judge images of the persona (identity, prompt adherence, defects), retry rejected ones
with adjusted prompts, and choose which epoch's LoRA is the persona.

Heavy imports (torch, open_clip, diffusers) happen inside the functions, so importing this package is cheap.
"""

from zirelia_local.critic.live import LiveJudge, live_judge
from zirelia_local.critic.stage import CriticResult, run_critic

__all__ = ["CriticResult", "LiveJudge", "live_judge", "run_critic"]
