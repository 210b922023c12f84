"""Stage 4, the critic: judge images of the persona (identity, prompt adherence, defects), retry rejected ones
with adjusted prompts, and choose which epoch's LoRA is the persona.

Heavy imports (torch, open_clip, diffusers) happen inside the functions, so importing this package is cheap.
Later stages that draw with the LoRA (`zirelia generate`) reuse the draw-judge-retry loop through the names
below: `renderer_for` (the base model with a LoRA), `Critic` (the judge), `draw_and_judge` (the loop).
"""

from zirelia_local.critic.attempts import EvaluationItem, attempt_outcome, clip_text, draw_and_judge
from zirelia_local.critic.judge import Critic
from zirelia_local.critic.live import LiveJudge, live_judge
from zirelia_local.critic.renderers import (
    EvaluationRenderer,
    evaluation_base_model,
    evaluation_generation_config,
    evaluation_size,
    renderer_for,
)
from zirelia_local.critic.retry import Attempt, first_attempt, next_attempt
from zirelia_local.critic.stage import BEST_NAME, CRITIC_DIR, SELECTION_NAME, CriticResult, invocation, run_critic
from zirelia_local.critic.verdict import FAILURE_LABELS, Check, Verdict

__all__ = [
    "BEST_NAME",
    "CRITIC_DIR",
    "FAILURE_LABELS",
    "SELECTION_NAME",
    "Attempt",
    "Check",
    "Critic",
    "CriticResult",
    "EvaluationItem",
    "EvaluationRenderer",
    "LiveJudge",
    "Verdict",
    "attempt_outcome",
    "clip_text",
    "draw_and_judge",
    "evaluation_base_model",
    "evaluation_generation_config",
    "evaluation_size",
    "first_attempt",
    "invocation",
    "live_judge",
    "next_attempt",
    "renderer_for",
    "run_critic",
]
