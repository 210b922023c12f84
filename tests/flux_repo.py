"""A stand-in for the FLUX.1-dev repository, made of the tiny FLUX pipeline's real weights, in the layouts users
get it in: the Hugging Face hub cache (`models--org--name/blobs`, `snapshots/<commit>` of links, `refs/main`)
and a plain folder (`hf download --local-dir`).

FLUX.1-dev itself cannot be downloaded here; its repository's layout is what matters to "auto", so the stand-in
copies it: `flux1-dev.safetensors` and `ae.safetensors` at the root beside the diffusers folders, the
transformer in three shards (`diffusion_pytorch_model-0000N-of-00003.safetensors` and their index) and T5 in
two (`model-0000N-of-00002.safetensors`), stored in bfloat16 with float32 layer norms, as the repository
stores them. The tensors are the tiny model's; the root files hold the transformer's and the VAE's weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import cache
from pathlib import Path

FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TRANSFORMER_SHARDS = tuple(f"diffusion_pytorch_model-{index:05d}-of-00003.safetensors" for index in (1, 2, 3))
T5_SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def _sharded(tensors: dict, shard_names: tuple[str, ...], index_name: str, folder: str) -> dict[str, bytes]:
    """`tensors` split over the shards in name order, with a transformers/diffusers-style index."""
    from safetensors.torch import save

    names = sorted(tensors)
    per_shard = -(-len(names) // len(shard_names))
    files: dict[str, bytes] = {}
    weight_map = {}
    total = 0
    for position, shard in enumerate(shard_names):
        part = {name: tensors[name].contiguous() for name in names[position * per_shard : (position + 1) * per_shard]}
        files[f"{folder}/{shard}"] = save(part, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
        total += sum(tensor.numel() * tensor.element_size() for tensor in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    files[f"{folder}/{index_name}"] = json.dumps(index, indent=2).encode()
    return files


@cache
def _repository_files(tiny_flux_dir: str) -> tuple[tuple[str, bytes], ...]:
    import torch
    from safetensors.torch import load_file, save

    source = Path(tiny_flux_dir)
    files: dict[str, bytes] = {}
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if path.is_file() and not relative.startswith(("transformer/", "text_encoder_2/", "zirelia_")):
            files[relative] = path.read_bytes()
    transformer = load_file(source / "transformer" / "diffusion_pytorch_model.safetensors")
    files["transformer/config.json"] = (source / "transformer" / "config.json").read_bytes()
    files.update(
        _sharded(transformer, TRANSFORMER_SHARDS, "diffusion_pytorch_model.safetensors.index.json", "transformer")
    )
    t5 = {
        name: tensor if "layer_norm" in name else tensor.to(torch.bfloat16)
        for name, tensor in load_file(source / "text_encoder_2" / "model.safetensors").items()
    }
    files["text_encoder_2/config.json"] = (source / "text_encoder_2" / "config.json").read_bytes()
    files.update(_sharded(t5, T5_SHARDS, "model.safetensors.index.json", "text_encoder_2"))
    files["flux1-dev.safetensors"] = save(transformer)
    files["ae.safetensors"] = save(load_file(source / "vae" / "diffusion_pytorch_model.safetensors"))
    return tuple(sorted(files.items()))


def repository_files(tiny_flux_dir: Path) -> dict[str, bytes]:
    """Relative path -> contents of the stand-in repository (built once per session)."""
    return dict(_repository_files(str(tiny_flux_dir)))


def write_hub_cache(
    cache: Path, files: dict[str, bytes | Path], repo_id: str = FLUX_DEV_REPO, commit: str = COMMIT
) -> Path:
    """`files` (contents, or a file to hard-link) as the hub cache stores a download of `repo_id` at `commit`
    (blobs named by their sha256, links in snapshots/<commit>, refs/main); returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for relative, data in files.items():
        digest = hashlib.sha256(data if isinstance(data, bytes) else data.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(exist_ok=True)
        if blob.exists():
            pass
        elif isinstance(data, bytes):
            blob.write_bytes(data)
        else:
            try:
                os.link(data, blob)
            except OSError:
                shutil.copyfile(data, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    """`files` as `hf download --local-dir folder` leaves them: plain files."""
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


def sharded_files(tensors: dict, shard_names: tuple[str, ...], index_name: str, folder: str) -> dict[str, bytes]:
    """`tensors` split over `shard_names` in name order, with their index, as `folder/...` entries."""
    return _sharded(tensors, shard_names, index_name, folder)


def assert_same_tensors(merged: Path, shards: list[Path]) -> None:
    """`merged` holds exactly the shards' tensors: same names, dtypes, shapes and bytes."""
    import torch
    from safetensors import safe_open

    expected = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            expected.update({name: handle.get_tensor(name) for name in handle.keys()})
    with safe_open(str(merged), framework="pt") as handle:
        assert set(handle.keys()) == set(expected)
        for name in handle.keys():
            tensor = handle.get_tensor(name)
            assert tensor.dtype == expected[name].dtype and tensor.shape == expected[name].shape, name
            assert torch.equal(tensor.view(torch.uint8), expected[name].view(torch.uint8)), name
