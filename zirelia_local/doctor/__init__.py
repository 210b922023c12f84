"""`zirelia doctor [CONFIG]`: what a run needs, checked on this machine, printed as one table.

Every row is a check with a status: `ok`, `warn` (the run can start, but read this) or `FAIL` (the
configured run cannot start), a detail and, when it is not ok, the fix. Without a config only the
environment is checked (Python, packages, CUDA and GPUs); with one, also what that run needs: a device that
can run its model, the model weights (or hub access and a token), sd-scripts and its interpreter for the kohya
backend, the kohya model files, the face embedder's weights and disk space. `collect_checks(config,
stages=[...])` keeps the rows some of the stages need.

Nothing here downloads anything or waits on the network for long: the Hugging Face cache is read from disk,
and the only network call (an access check of a gated model that is not cached, when a token exists) is
abandoned after a few seconds.

Modules: `check` (the row, the stage names), `environment`, `models` (device, generator, hub), `kohya`,
`resources` (faces, CLIP, disk) and `table` (all rows in order, printed).
"""

from zirelia_local.doctor.check import STAGES, Check, Stage
from zirelia_local.doctor.table import collect_checks, run_doctor

__all__ = ["STAGES", "Check", "Stage", "collect_checks", "run_doctor"]
