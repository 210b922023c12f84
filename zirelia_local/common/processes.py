"""The processes of one launch (`accelerate launch --num_processes N`, on one machine or several), through
accelerate's `PartialState`: who this process is, its share of a list of work, and the points where all of
them meet.

On one process (a plain `python -m zirelia_local.train`, or `accelerate launch --num_processes 1`) every
function here is a no-op that never creates accelerate's state: nothing is initialised that a library
user's own `Accelerator` would then inherit. The launcher's environment says which case this is
(`WORLD_SIZE`, set by torchrun under `accelerate launch`), so asking costs nothing.

Only JSON text crosses between processes (`gather_json`, `broadcast_json`): accelerate pickles what it sends,
and plain strings keep that harmless.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a process waits for the others at a meeting point. The other processes wait through the whole
#: training stage (the main process trains; `zirelia_local.scale`), so this is long; a process that dies ends
#: the launch at once anyway (torchrun stops the rest).
WAIT_TIMEOUT_ENV = "ZIRELIA_PROCESS_TIMEOUT_HOURS"
DEFAULT_WAIT_HOURS = 48.0


def launched_processes() -> int:
    """How many processes this launch has in all (1 without a distributed launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_distributed() -> bool:
    """True under a launch of more than one process."""
    return launched_processes() > 1


def _state() -> Any:
    import torch
    from accelerate import PartialState

    hours = float(os.environ.get(WAIT_TIMEOUT_ENV, DEFAULT_WAIT_HOURS))
    # Processes on the CPU meet through gloo: asked for (ACCELERATE_USE_CPU), or where no GPU is visible.
    # (`accelerate launch --cpu` starts one process unless given an MPI host file; a CPU launch of several is
    # `accelerate launch --multi_gpu` with ACCELERATE_USE_CPU=true, which the shortcut writes.)
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    # The first call makes the state (and the process group); later calls share it (accelerate's shared state).
    return PartialState(cpu=cpu, timeout=timedelta(hours=hours))


def process_index() -> int:
    """This process's rank in the whole launch (0 on one process)."""
    return _state().process_index if is_distributed() else 0


def local_process_count() -> int:
    """How many processes of the launch run on this machine (1 on one process)."""
    if not is_distributed():
        return 1
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", launched_processes())))


def is_local_main_process() -> bool:
    """True on the first process of each machine of a launch (`LOCAL_RANK` 0); always True on one process.
    Read from the launcher's environment, so asking creates no state."""
    return not is_distributed() or os.environ.get("LOCAL_RANK", "0") == "0"


def is_main_process() -> bool:
    """True on the process that writes the shared files (rank 0); always True on one process."""
    return process_index() == 0


def process_device() -> Any:
    """This process's device under a launch (accelerate's choice: `cuda:<local rank>`, or the CPU)."""
    return _state().device


def wait_for_everyone() -> None:
    """Meet the other processes here (a barrier); nothing on one process."""
    if is_distributed():
        _state().wait_for_everyone()


def share_of(items: Sequence[T], *, unit: int = 1) -> list[T]:
    """This process's contiguous share of `items`, in order, cut only between groups of `unit` items.

    With `unit` = the batch size, every batch is the same one the single process would draw (on a GPU a
    batch's composition can change an image's last bits; one process draws whole batches of the plan).
    """
    items = list(items)
    if not is_distributed():
        return items
    groups = [items[start : start + unit] for start in range(0, len(items), max(1, unit))]
    with _state().split_between_processes(groups) as mine:
        return [item for group in mine for item in group]


def gather_json(value: Any) -> list[Any]:
    """Every process's `value` (JSON-serialisable), in rank order, on every process; `[value]` on one."""
    if not is_distributed():
        return [value]
    from accelerate.utils import gather_object

    return [json.loads(text) for text in gather_object([json.dumps(value)])]


def broadcast_json(value: Any) -> Any:
    """The main process's `value` (JSON-serialisable), on every process; `value` itself on one process."""
    if not is_distributed():
        return value
    from accelerate.utils import broadcast_object_list

    box = [json.dumps(value) if is_main_process() else None]
    broadcast_object_list(box, from_process=0)
    return json.loads(box[0])


#: Set by the main process for a child it starts under its run lock (the training stage of a launch).
LOCK_HELD_ENV = "ZIRELIA_RUN_LOCK_HELD"

#: What a child process of ours must not inherit from the launch: it is a single process of its own (or
#: starts its own `accelerate launch`), not another rank of ours.
LAUNCH_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)


def single_process_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without the launch's ranks and rendezvous (and accelerate's launch flags)."""
    env = dict(os.environ if environ is None else environ)
    for name in list(env):
        if name in LAUNCH_ENV or name.startswith("ACCELERATE_") or name.startswith("TORCHELASTIC_"):
            del env[name]
    return env
