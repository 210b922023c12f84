"""Prove it at FLUX.1 scale: measure every stage on one CUDA GPU with FLUX.1-dev-shaped random weights.

    python benchmarks/gpu_proof.py            # --quick (default): a reduced set, at most 8 min on an H100/H200
    python benchmarks/gpu_proof.py --full     # every case of every section
    python benchmarks/gpu_proof.py --tiny     # every section on the builtin tiny model, on the CPU (CI)
    make gpu-proof

No network and no weights: the transformer (19 double + 38 single blocks), T5-XXL, CLIP-L and the 16-channel
VAE are built at FLUX.1-dev's real shapes with random values directly on the GPU, in bf16, with tokenizers of
the real vocabulary sizes, and saved once as a diffusers folder that every case loads through the project's
own loader (kept in the zirelia cache for a rerun: about 34 GB). Each case runs in a fresh process, so its
peak memory (torch's allocated and reserved, and the device's used memory) is its own:

  (a) generation s/image at 1024x1024, 28 steps, batch 1 and 2, per `[generator] memory` / `quantization` mode;
  (b) the diffusers backend's training s/step and peak at 512 and 1024 px, rank 32, per preset it honours;
  (c) sd-scripts' flux_train_network.py through the project's kohya launcher, per preset, when
      ZIRELIA_SD_SCRIPTS names a checkout with its venv;
  (d) the critic's s/image at its defaults;
  (e) a projection of the whole configs/sienna.toml job on this GPU, beside published anchors.

It writes docs/benchmarks-gpu.md (the machine, the command, the date, one table per section) and never a
figure it did not measure. A failing case is recorded with its error and the run goes on (exit 1 at the end);
a section whose packages are missing is skipped with the reason. Without a GPU (and without --tiny) it exits 2
with a one-line reason. See benchmarks/README.md for offline GPU boxes.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the project, when run from a checkout without installing it
sys.path.insert(0, str(HERE))  # the gpuproof package beside this script

from gpuproof.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
