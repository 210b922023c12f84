"""Prompt adherence: cosine similarity of open_clip image and text embeddings.

Weights come only from a file the user names or from open_clip's own pretrained tags:

- `clip_model` is an open_clip architecture name (`ViT-B-32`) or a folder holding `open_clip_config.json`
  (open_clip's `local-dir` layout, as `hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K` leaves it);
- `clip_pretrained` is a local `.safetensors` file, or an open_clip pretrained tag (`laion2b_s34b_b79k`),
  which open_clip fetches from the hub or finds in the Hugging Face cache; for a folder, None means the
  folder's own `.safetensors` weights.

User files are read with safetensors only, unless `[run] allow_pickle` opts in to pickled weights (then read with
torch's weights-only unpickler). With no weights configured the score is
unavailable (a random CLIP would only produce noise), and every verdict records that instead of guessing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zirelia_local.common.config import CriticConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.paths import display_path, path_problem
from zirelia_local.common.security import PICKLE_SUFFIXES, require_safetensors

logger = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
PREFERRED_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors")
# The doctor's row about these weights; a warning under this name in the pre-flight is not repeated by the critic.
CLIP_CHECK_NAME = "critic CLIP weights"
WEIGHTS_HINT = (
    "set [critic] clip_pretrained to a local open_clip .safetensors file (e.g. open_clip_model.safetensors from "
    "`hf download laion/CLIP-ViT-B-32-laion2B-s34B-b79K`) or to an open_clip pretrained tag such as "
    "'laion2b_s34b_b79k' (needs the hub or a filled Hugging Face cache)"
)


@dataclass(frozen=True)
class ClipAvailability:
    scorer: ClipScorer | None
    #: why there is no scorer (None when there is one)
    reason: str | None
    #: what was loaded, for the record ("ViT-B-32 + /path/weights.safetensors")
    source: str | None = None


class ClipScorer:
    """An open_clip model with its preprocessing and tokenizer; scores image-text pairs in batches."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, device: Any = "cpu", name: str = "") -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self._text_cache: dict[str, Any] = {}

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]:
        """Cosine similarity of each image with its own text (pairs, not a matrix)."""
        import torch
        from PIL import Image

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if not images:
            return []
        pixels = torch.stack(
            [self.preprocess(image if isinstance(image, Image.Image) else Image.fromarray(image)) for image in images]
        ).to(self.device)
        with torch.inference_mode():
            image_features = self.model.encode_image(pixels).float()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = torch.stack([self._text_feature(text) for text in texts]).to(image_features.device)
        return [float(value) for value in (image_features * text_features).sum(dim=-1).cpu()]

    def _text_feature(self, text: str) -> Any:
        # The same few evaluation texts come back for every epoch and retry: encode each once.
        if text not in self._text_cache:
            import torch

            with torch.inference_mode():
                feature = self.model.encode_text(self.tokenizer([text]).to(self.device)).float()[0]
            self._text_cache[text] = feature / feature.norm()
        return self._text_cache[text]


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns on the root logger that a model is "initialized randomly" before we load its weights."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _folder_weights(folder: Path, allow_pickle: bool) -> Path | None:
    for name in PREFERRED_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors"))
    if not found and allow_pickle:
        found = sorted(path for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    return found[0] if found else None


def _weights_file(value: str | Path, what: str, allow_pickle: bool) -> Path:
    path = require_safetensors(Path(value).expanduser(), what, allow_pickle=allow_pickle)
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise ZireliaError(f"{what} {path} is not a .safetensors file", hint=WEIGHTS_HINT)
    problem = path_problem(path, "file")
    if problem is not None:
        raise ZireliaError(f"{what} {display_path(path)} {problem}", hint=WEIGHTS_HINT)
    return path


def _looks_like_path(value: str) -> bool:
    return value.endswith((".safetensors", ".bin", ".pt", ".pth")) or "/" in value or value.startswith(("~", "."))


def clip_weights_source(critic: CriticConfig, *, allow_pickle: bool = False) -> Path | str | None:
    """Where the configured CLIP weights come from, read from disk only (no open_clip import, no download).

    A local weights file (checked: it exists and is safetensors unless `allow_pickle`), an open_clip pretrained
    tag (a str, which open_clip fetches or finds in the Hugging Face cache), or None when no weights are
    configured. Raises the ZireliaError that loading would raise for a folder or file that is not usable, so
    the doctor's pre-flight can say it before any image is drawn.
    """
    folder = Path(critic.clip_model).expanduser()
    pretrained = critic.clip_pretrained
    if folder.is_dir():
        if not (folder / CONFIG_NAME).is_file():
            raise ZireliaError(
                f"[critic] clip_model {folder} is a folder without {CONFIG_NAME}",
                hint="point clip_model at an open_clip model folder (with open_clip_config.json) or use an "
                "architecture name such as 'ViT-B-32'",
            )
        if pretrained is not None:
            return _weights_file(pretrained, "[critic] clip_pretrained", allow_pickle)
        return _folder_weights(folder, allow_pickle)
    if pretrained is None:
        return None
    if _looks_like_path(pretrained):
        return _weights_file(pretrained, "[critic] clip_pretrained", allow_pickle)
    return pretrained


def load_clip_scorer(critic: CriticConfig, *, device: Any = "cpu", allow_pickle: bool = False) -> ClipAvailability:
    """Load the configured CLIP model, or say why prompt adherence cannot be scored.

    A configured source that cannot be loaded is an error (the user asked for it); no source at all is
    `unavailable`, with the reason recorded in every verdict.
    """
    import open_clip
    import torch

    model_spec = critic.clip_model
    pretrained = critic.clip_pretrained
    folder = Path(model_spec).expanduser()
    source = clip_weights_source(critic, allow_pickle=allow_pickle)
    weights = source if isinstance(source, Path) else None
    if folder.is_dir():
        if weights is None:
            return ClipAvailability(None, f"no .safetensors CLIP weights in {folder}; {WEIGHTS_HINT}")
        model_cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("model_cfg")
        if not isinstance(model_cfg, dict):
            raise ZireliaError(f"{folder / CONFIG_NAME} has no model_cfg", hint="use open_clip's config layout")
        name = f"local-dir:{folder}"
        with _quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(name, load_weights=False, device="cpu")
    else:
        if model_spec not in open_clip.list_models():
            raise ZireliaError(
                f"[critic] clip_model {model_spec!r} is neither an open_clip architecture nor a model folder",
                hint="use e.g. 'ViT-B-32' or 'ViT-L-14' (open_clip.list_models() lists them), or a folder "
                f"with {CONFIG_NAME}",
            )
        if source is None:
            return ClipAvailability(
                None, f"no CLIP weights configured ([critic] clip_pretrained is not set); {WEIGHTS_HINT}"
            )
        name = model_spec
        if weights is not None:
            with _quiet_root_logger():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_spec, pretrained=None, load_weights=False, device="cpu"
                )
        else:
            tags = [tag for model_name, tag in open_clip.list_pretrained() if model_name == model_spec]
            if pretrained not in tags:
                raise ZireliaError(
                    f"[critic] clip_pretrained {pretrained!r} is not an open_clip tag of {model_spec} "
                    f"(known: {', '.join(tags) or 'none'})",
                    hint=WEIGHTS_HINT,
                )
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(model_spec, pretrained=pretrained)
            except Exception as error:  # open_clip wraps hub failures in RuntimeError; the cause is in the text
                raise ZireliaError(
                    f"could not load CLIP weights {model_spec}/{pretrained}: {error}", hint=WEIGHTS_HINT
                ) from error
    if weights is not None:
        try:
            # A .safetensors file is read by safetensors; a pickle only gets here with [run] allow_pickle,
            # and then with torch's weights-only unpickler.
            open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
        except Exception as error:  # shape or key mismatch: the file is for another architecture
            raise ZireliaError(
                f"CLIP weights {weights} do not fit the {model_spec} architecture: {error}",
                hint="set [critic] clip_model to the architecture the weights were trained as",
            ) from error
    tokenizer = open_clip.get_tokenizer(name)
    model = model.to(device)
    if isinstance(device, str):
        device = torch.device(device)
    source = f"{model_spec} + {weights or pretrained}"
    logger.debug("CLIP for prompt adherence: %s", source)
    return ClipAvailability(ClipScorer(model, preprocess, tokenizer, device=device, name=source), None, source)
