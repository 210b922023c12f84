"""The GPU proof of benchmarks/gpu_proof.py: FLUX.1-dev-shaped random models, one measured case per process.

Modules: `main` (command line, plan, report), `cases` (the child process protocol and memory sampling),
`build` (random models and the files sd-scripts reads), `tokenizers`, `setup` (configs and training images
of a case), one module per section (`generation`, `training`, `kohya`, `critic`), `projection` and `report`.
"""
