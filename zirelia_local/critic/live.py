"""The critic's live judge: the sample images training draws at each sampled epoch's end, judged as the critic
judges its evaluation images, and the early-stop decision on the curve they make.

Training (stage 3) cannot import the critic (stage 4), so it states what it needs from a judge
(`training.EpochJudge`) and the top of the package (`zirelia train`, the pipeline) hands it `live_judge(config)`.
The checks are the critic's own (`Critic.judge_batch`: face found, one main face, identity distance to
`identity.safetensors`, the defects, CLIP where configured), the epoch's scores its own
(`selection.summarize_epoch`, first attempts only: samples get no retries), and so is the decision
(`selection.early_stop_decision`): one copy of each rule and threshold.

Models load on the first sampled epoch and on the CPU, since the GPU belongs to training while it runs: the
face embedder (insightface's onnxruntime on the CPU), and CLIP when `[critic] clip_pretrained` is set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.critic.attempts import clip_text
from zirelia_local.critic.judge import Critic
from zirelia_local.critic.selection import EpochScore, early_stop_decision, summarize_epoch
from zirelia_local.critic.verdict import FAILURE_LABELS
from zirelia_local.dataset import sample_prompts
from zirelia_local.training import JudgedEpoch


class LiveJudge:
    """Judges the sample images of one epoch with the critic's checks (a `training.EpochJudge`)."""

    def __init__(self, config: ZireliaConfig, *, critic: Critic | None = None) -> None:
        self.config = config
        self._critic = critic

    @property
    def critic(self) -> Critic:
        if self._critic is None:
            from zirelia_local.critic.clip_score import load_clip_scorer

            # On the CPU: sd-scripts (or the diffusers trainer) holds the GPU's memory while samples are judged.
            cpu = self.config.model_copy(update={"curate": self.config.curate.model_copy(update={"device": "cpu"})})
            clip = load_clip_scorer(self.config.critic, allow_pickle=self.config.run.allow_pickle)
            self._critic = Critic.from_config(cpu, clip=clip)
        return self._critic

    def judge_epoch(
        self, epoch: int, images: Sequence[Path], history: Sequence[dict[str, Any]], *, since_epoch: int = 0
    ) -> JudgedEpoch:
        """The epoch's scores, a console line, and the early stop's answer given the curve so far (`history`)."""
        prompts = sample_prompts(self.config)
        texts = [clip_text(self.config, prompts[index % len(prompts)].scene) for index in range(len(images))]
        verdicts = self.critic.judge_batch(list(images), texts)
        attempts = [
            {
                "item": f"s{index:02d}",
                "attempt": 0,
                "accepted": verdict.accepted,
                "scores": verdict.scores,
                "failures": verdict.failures,
            }
            for index, verdict in enumerate(verdicts)
        ]
        row = summarize_epoch(epoch, attempts)
        failures = Counter(kind for verdict in verdicts for kind in verdict.failures)
        record = {**row.to_record(), "failures": dict(sorted(failures.items()))}
        stop = None
        train = self.config.train
        if train.early_stop == "identity":
            curve = [EpochScore.from_record(item) for item in history if item.get("epoch") != epoch] + [row]
            decision = early_stop_decision(
                curve,
                patience=train.early_stop_patience,
                min_delta=train.early_stop_min_delta,
                min_epochs=train.early_stop_min_epochs,
                since_epoch=since_epoch,
            )
            stop = decision.to_record() if decision is not None else None
        return JudgedEpoch(record=record, summary=self._summary(row, failures), stop=stop)

    def _summary(self, row: EpochScore, failures: Counter[str]) -> str:
        counts = f"{row.faces}/{row.images} with a face, {row.defects} with defects, {row.accepted} accepted"
        if row.identity is not None:
            return f"identity {row.identity:.3f} ({counts})"
        if row.faces == 0:
            why = ", ".join(f"{FAILURE_LABELS.get(kind, kind)} x{count}" for kind, count in failures.items())
            return f"no face in any of the {row.images} sample image(s): no identity to measure ({why})"
        return f"no reference identity to compare the faces with ({counts})"


def live_judge(config: ZireliaConfig) -> LiveJudge | None:
    """The judge of the live identity curve for `run_training(live=...)`; None when nothing is sampled."""
    return LiveJudge(config) if config.train.sample_every_n_epochs > 0 else None
