"""Reading a failed sd-scripts run's log tail and saying, in one paragraph, what went wrong and what to try.

The patterns are the messages PyTorch, Python and sd-scripts print for the failures users hit most:
GPU out of memory, the host's OOM killer, a missing module (wrong interpreter), a missing or truncated
model file, a flag this sd-scripts does not know, tokenizers that cannot be fetched offline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.errors import ZireliaError
from zirelia_local.training.kohya_flags import SD_SCRIPTS_COMMIT
from zirelia_local.training.presets import smaller_preset


@dataclass(frozen=True)
class FailureContext:
    """What the diagnosis may mention: the run's preset, interpreter, checkout and log."""

    returncode: int
    log_path: Path
    preset: str
    model_type: str
    python: Path
    sd_scripts: Path
    blocks_to_swap: int = 0


_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|HIP out of memory|MPS backend out of memory"
)
_NO_MODULE = re.compile(r"No module named '?(?P<module>[\w.]+)'?")
_NO_FILE = re.compile(r"(?:FileNotFoundError|No such file or directory)\b.*?'(?P<path>[^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.+)$")
_INVALID_CHOICE = re.compile(r"error: argument (?P<flag>--\w+): (?P<what>.+)$")
_NO_CUDA = re.compile(
    r"Torch not compiled with CUDA enabled|Found no NVIDIA driver|CUDA driver version is insufficient|"
    r"no kernel image is available for execution"
)
_BAD_SAFETENSORS = re.compile(r"SafetensorError|HeaderTooLarge|incomplete metadata|Error while deserializing header")
_HUB = re.compile(
    r"We couldn't connect to|Can't load tokenizer|OfflineModeIsEnabled|LocalEntryNotFoundError|"
    r"Failed to resolve|Max retries exceeded with url"
)
_ASSERTION = re.compile(r"AssertionError:?\s*(?P<text>.*)$")
_KILLED_CODES = {-9, 137}
# The trainer killed by SIGKILL, as accelerate's launcher or the shell reports it.
_KILLED = re.compile(r"died with <Signals\.SIGKILL|exit status -9\b|^Killed$")
# A traceback's last line: `torch.OutOfMemoryError: CUDA out of memory...`, `AssertionError: ...`.
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt))(?::\s*(?P<text>.*))?$")
# accelerate's launcher re-raises the trainer's failure as this; the trainer's own exception comes first.
_LAUNCHER_EXCEPTION = "subprocess.CalledProcessError"


def root_exception(lines: Sequence[str]) -> tuple[str, list[str]] | None:
    """The trainer's final exception line and the lines after it (a message may continue there), or None.

    Warnings also mention errors (bitsandbytes logs "No module named 'kernels'" on every start), so a
    diagnosis trusts the exception that ended the trainer before trusting any other line.
    """
    for index in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[index].strip())
        if match and match.group("type") != _LAUNCHER_EXCEPTION:
            following = [line for line in lines[index + 1 : index + 4] if not line.startswith(("Traceback", "  "))]
            return lines[index].strip(), following
    return None


def _last_match(lines: Sequence[str], pattern: re.Pattern[str]) -> re.Match[str] | None:
    for line in reversed(lines):
        match = pattern.search(line)
        if match:
            return match
    return None


def _oom_hint(ctx: FailureContext) -> str:
    smaller = smaller_preset(ctx.preset)
    if smaller is not None:
        return (
            f'set [train] vram = "{smaller}" (the next smaller preset) and rerun; training resumes from the newest '
            "saved state"
        )
    if ctx.model_type == "flux":
        more = min(max(ctx.blocks_to_swap, 16) + 6, 35)
        return (
            f"12gb is the smallest preset: swap more blocks ([train.extra_args] blocks_to_swap = {more}, at most 35), "
            "use an fp8 T5-XXL file (t5xxl_fp8_e4m3fn.safetensors) and lower [train] resolution to 512"
        )
    return "12gb is the smallest preset: lower [train] resolution and batch_size, or close other programs using the GPU"


def diagnose_failure(lines: Sequence[str], ctx: FailureContext) -> ZireliaError:
    """The user-facing error for a run that exited with `ctx.returncode` after printing `lines`."""
    log = ctx.log_path
    killed = _killed(lines, ctx)
    if killed is not None:
        return killed
    root = root_exception(lines)
    if root is not None:
        # Classify by the exception that ended the trainer; other lines only when it says nothing known.
        lines = [root[0], *root[1]]
    checks: list[Callable[[], ZireliaError | None]] = [
        lambda: _oom(lines, ctx),
        lambda: _missing_module(lines, ctx),
        lambda: _unrecognized(lines, ctx),
        lambda: _no_cuda(lines, ctx),
        lambda: _bad_file(lines, ctx),
        lambda: _missing_file(lines, ctx),
        lambda: _hub(lines, ctx),
        lambda: _assertion(lines, ctx),
    ]
    for check in checks:
        error = check()
        if error is not None:
            return error
    tail = "\n    ".join(lines[-12:]) if lines else "(no output)"
    if root is not None:
        return ZireliaError(
            f"sd-scripts stopped with {root[0]} (exit code {ctx.returncode}; traceback in {log}).",
            hint=f"read the end of {log}; `zirelia train CONFIG --dry-run` prints the exact command to rerun by hand",
        )
    return ZireliaError(
        f"sd-scripts exited with code {ctx.returncode}. Last lines of {log}:\n    {tail}",
        hint=f"read the whole log ({log}); `zirelia train CONFIG --dry-run` prints the exact command to rerun by hand",
    )


def _oom(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _OOM)
    if match is None:
        return None
    return ZireliaError(
        f"sd-scripts ran out of GPU memory ({match.group(0)}) with the {ctx.preset} VRAM preset: the "
        f"{ctx.model_type.upper()} model, its activations and the optimizer state did not fit the card "
        f"(see {ctx.log_path}).",
        hint=_oom_hint(ctx),
    )


def _killed(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    if ctx.returncode not in _KILLED_CODES and _last_match([line.strip() for line in lines], _KILLED) is None:
        return None
    return ZireliaError(
        f"sd-scripts was killed (exit code {ctx.returncode}), most likely by the system's out-of-memory killer: "
        "the host ran out of RAM (FLUX training holds the models in RAM while loading, and blocks_to_swap keeps "
        f"swapped blocks there). See {ctx.log_path} and `dmesg`.",
        hint="close other programs or add swap space; an fp8 T5-XXL file and a smaller preset also need less RAM",
    )


def _missing_module(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _NO_MODULE)
    if match is None:
        return None
    module = match.group("module")
    top = module.split(".")[0]
    if top == "bitsandbytes":
        return ZireliaError(
            f"the 8-bit optimizer needs bitsandbytes, which {ctx.python} cannot import.",
            hint=f'install it there ({ctx.python} -m pip install bitsandbytes) or set [train] optimizer = "AdamW" '
            'or "Adafactor"',
        )
    return ZireliaError(
        f"sd-scripts could not import `{module}` with {ctx.python}: this interpreter does not have sd-scripts' "
        "requirements, so it is probably not the Python of sd-scripts' virtual environment.",
        hint=f"set [train] python to the venv where you ran `pip install -r requirements.txt` in {ctx.sd_scripts} "
        f"(usually {ctx.sd_scripts / 'venv' / 'bin' / 'python'}), or install them into this one",
    )


def _unrecognized(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _UNRECOGNIZED)
    if match is not None:
        return ZireliaError(
            f"this sd-scripts checkout ({ctx.sd_scripts}) does not accept {match.group('args').strip()}: zirelia-local "
            f"writes flags checked against sd-scripts {SD_SCRIPTS_COMMIT}, so the checkout is probably older.",
            hint=f"update it (cd {ctx.sd_scripts} && git pull, then reinstall requirements.txt), or remove the flag "
            "from [train.extra_args] if you added it there",
        )
    match = _last_match(lines, _INVALID_CHOICE)
    if match is not None:
        return ZireliaError(
            f"sd-scripts rejected {match.group('flag')}: {match.group('what').strip()}",
            hint="fix the value in [train] or [train.extra_args]",
        )
    return None


def _no_cuda(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _NO_CUDA)
    if match is None:
        return None
    return ZireliaError(
        f"sd-scripts' PyTorch cannot use the GPU ({match.group(0)}).",
        hint=f"install the PyTorch build for your CUDA driver into sd-scripts' venv ({ctx.python} -m pip install "
        "torch torchvision --index-url <the PyTorch index for your CUDA version>)",
    )


def _bad_file(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _BAD_SAFETENSORS)
    if match is None:
        return None
    return ZireliaError(
        f"a model file could not be read ({match.group(0)}): it is truncated or not a safetensors file "
        f"(see {ctx.log_path} for which one).",
        hint="download it again and compare its size (or sha256) with the one published",
    )


def _missing_file(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _NO_FILE)
    if match is None:
        return None
    return ZireliaError(
        f"sd-scripts could not find {match.group('path')}.",
        hint="check the paths in [train] (pretrained_model, clip_l, t5xxl, ae) and [train.extra_args]",
    )


def _hub(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _HUB)
    if match is None:
        return None
    return ZireliaError(
        f"sd-scripts tried to download from the Hugging Face hub and failed ({match.group(0)}): on an offline "
        "machine the tokenizers must be local.",
        hint="set [train] tokenizer_cache_dir to a folder holding `openai_clip-vit-large-patch14` and "
        "`google_t5-v1_1-xxl` (run once online with the same setting and sd-scripts saves them there)",
    )


def _assertion(lines: Sequence[str], ctx: FailureContext) -> ZireliaError | None:
    match = _last_match(lines, _ASSERTION)
    if match is None:
        return None
    text = match.group("text").strip() or "(no message)"
    return ZireliaError(
        f"sd-scripts stopped on a failed check: {text} (see {ctx.log_path}).",
        hint="the message names the setting; change it in [train] or [train.extra_args]",
    )
