"""Loading FluxPipeline: memory plans and the messages users get when weights, access or CUDA are missing."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
import torch

from tests.conftest import run_cli, write_config
from zirelia_local.common.config import GeneratorConfig, load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.dataset.flux import GIB, plan_memory, resolve_device, resolve_dtype, resolve_model_source

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


@pytest.mark.parametrize(
    ("gib", "memory", "quantization"),
    [
        (80, "none", "none"),
        (40, "none", "none"),
        (24, "model_offload", "fp8_storage"),
        (16, "model_offload", "fp8_storage"),
        (8, "sequential_offload", "none"),
    ],
)
def test_auto_memory_plan_per_card(gib, memory, quantization):
    # The card is described by its memory size alone (no GPU here): plan_memory is a pure decision.
    plan = plan_memory(GeneratorConfig(), torch.device("cuda", 0), total_memory=int(gib * GIB))
    assert (plan.memory, plan.quantization) == (memory, quantization)
    assert f"{gib} GiB" in plan.reason


def _package(root, body: str):
    """A real (tiny) package named bitsandbytes on sys.path: a broken install, or one that imports."""
    (root / "bitsandbytes").mkdir(parents=True)
    (root / "bitsandbytes" / "__init__.py").write_text(body)
    return root


def test_auto_on_a_12gb_card_says_why_it_falls_back_from_nf4(tmp_path, monkeypatch):
    twelve = int(12 * GIB)
    if importlib.util.find_spec("bitsandbytes") is None:
        plan = plan_memory(GeneratorConfig(), torch.device("cuda", 0), total_memory=twelve)
        assert (plan.memory, plan.quantization) == ("model_offload", "fp8_storage")
        assert "bitsandbytes is not installed" in plan.fallback and "pip install bitsandbytes" in plan.reason
    monkeypatch.syspath_prepend(str(_package(tmp_path / "broken", "raise RuntimeError('no CUDA library found')\n")))
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    broken = plan_memory(GeneratorConfig(), torch.device("cuda", 0), total_memory=twelve)
    assert broken.quantization == "fp8_storage"
    assert "fails to import (RuntimeError: no CUDA library found)" in broken.fallback


def test_auto_on_a_12gb_card_takes_nf4_when_bitsandbytes_imports(tmp_path, monkeypatch):
    # Stand-in: bitsandbytes is not installed in this environment; a package that imports takes its place.
    monkeypatch.syspath_prepend(str(_package(tmp_path / "ok", "")))
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    plan = plan_memory(GeneratorConfig(), torch.device("cuda", 0), total_memory=int(12 * GIB))
    assert (plan.memory, plan.quantization, plan.fallback) == ("model_offload", "bnb_nf4", None)
    explicit = plan_memory(GeneratorConfig(quantization="none"), torch.device("cuda", 0), total_memory=int(12 * GIB))
    assert explicit.quantization == "none" and explicit.fallback is None


def test_explicit_memory_settings_are_kept():
    gen = GeneratorConfig(memory="sequential_offload", quantization="none")
    plan = plan_memory(gen, torch.device("cuda", 0), total_memory=80 * GIB)
    assert (plan.memory, plan.quantization) == ("sequential_offload", "none")


def test_cpu_keeps_everything_on_cpu_in_float32():
    plan = plan_memory(GeneratorConfig(), torch.device("cpu"))
    assert (plan.memory, plan.quantization) == ("none", "none")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


@needs_no_cuda
def test_cuda_requested_without_cuda_says_what_to_do():
    with pytest.raises(ZireliaError) as caught:
        resolve_device("cuda")
    assert "sees no CUDA GPU" in caught.value.message
    assert "device" in caught.value.hint


@needs_no_cuda
def test_cli_with_cuda_config_on_cpu_machine_exits_1_without_traceback(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace('device = "cpu"', 'device = "cuda"'))
    result = run_cli(["-m", "zirelia_local", "dataset", str(path)])
    assert result.returncode == 1
    text = " ".join(result.stderr.split())
    # The pre-flight says it before the model is loaded; without it, loading says it.
    assert "cuda: no CUDA GPU visible" in text and "the config asks for device 'cuda'" in text
    assert "Traceback" not in text
    unchecked = run_cli(["-m", "zirelia_local", "dataset", str(path), "--skip-checks"])
    assert unchecked.returncode == 1
    assert "sees no CUDA GPU" in unchecked.stderr and "Traceback" not in unchecked.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a GPU")
def test_auto_device_without_a_gpu_refuses_a_real_model_before_loading_it(tmp_path, tiny_flux_dir):
    from zirelia_local.dataset.flux import load_flux_pipeline

    with pytest.raises(ZireliaError, match=r"no GPU found for black-forest-labs/FLUX\.1-dev") as caught:
        load_flux_pipeline(GeneratorConfig(model="black-forest-labs/FLUX.1-dev", device="auto"))
    assert 'device = "cpu"' in caught.value.hint and "configs/demo.toml" in caught.value.hint
    # the embedded model and an explicit CPU choice still load
    assert load_flux_pipeline(GeneratorConfig(model="builtin:tiny-flux", device="auto")).device.type == "cpu"
    assert load_flux_pipeline(GeneratorConfig(model=str(tiny_flux_dir), device="cpu")).device.type == "cpu"


def test_folder_that_is_not_a_pipeline_is_named(tmp_path):
    (tmp_path / "flux1-dev.safetensors").write_bytes(b"")
    with pytest.raises(ZireliaError, match="not a diffusers pipeline folder"):
        resolve_model_source(str(tmp_path))


def test_missing_local_path_is_a_config_error(tmp_path):
    with pytest.raises(ZireliaError, match="neither an existing folder nor a hub id"):
        resolve_model_source(str(tmp_path / "no" / "such" / "model"))


def test_builtin_model_resolves_to_a_pipeline_folder(tiny_flux_dir):
    assert resolve_model_source("builtin:tiny-flux") == str(tiny_flux_dir)
    with pytest.raises(ZireliaError, match="unknown built-in model"):
        resolve_model_source("builtin:huge-flux")


def test_weights_not_cached_and_hub_unreachable(tmp_path):
    script = textwrap.dedent(
        """
        from zirelia_local.common.config import GeneratorConfig
        from zirelia_local.common.errors import ZireliaError
        from zirelia_local.dataset.flux import load_flux_pipeline
        try:
            load_flux_pipeline(GeneratorConfig(model="black-forest-labs/FLUX.1-dev", device="cpu"))
        except ZireliaError as error:
            print("MESSAGE:", error)
        """
    )
    result = run_cli(["-c", script], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert "not in the local Hugging Face cache" in result.stdout, result.stderr
    assert "hf download black-forest-labs/FLUX.1-dev" in result.stdout


def test_gated_repo_without_token(tmp_path):
    """A local HTTP server on loopback answers like the hub does for a gated repo (401 + X-Error-Code:
    GatedRepo): the real huggingface_hub / diffusers code path raises, and we explain what to do."""
    script = textwrap.dedent(
        """
        import http.server, os, threading
        class Gated(http.server.BaseHTTPRequestHandler):
            def answer(self):
                self.send_response(401)
                self.send_header("X-Error-Code", "GatedRepo")
                self.send_header("X-Error-Message", "Access to model black-forest-labs/FLUX.1-dev is restricted.")
                self.send_header("Content-Length", "0")
                self.end_headers()
            do_GET = do_HEAD = answer
            def log_message(self, *args):
                pass
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gated)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
        from zirelia_local.common.config import GeneratorConfig
        from zirelia_local.common.errors import ZireliaError
        from zirelia_local.dataset.flux import load_flux_pipeline
        try:
            load_flux_pipeline(GeneratorConfig(model="black-forest-labs/FLUX.1-dev", device="cpu"))
        except ZireliaError as error:
            print("MESSAGE:", error)
        server.shutdown()
        """
    )
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_HUB_OFFLINE": "0"}
    result = run_cli(["-c", script], env=env)
    assert "gated repository" in result.stdout, result.stdout + result.stderr
    assert "(no token found)" in result.stdout
    assert "HF_TOKEN" in result.stdout


def test_pickled_pipeline_folder_is_refused_unless_allowed(tmp_path, tiny_flux_dir):
    from diffusers import FluxPipeline

    from zirelia_local.dataset.flux import load_flux_pipeline

    pickled = tmp_path / "pickled"
    FluxPipeline.from_pretrained(tiny_flux_dir).save_pretrained(pickled, safe_serialization=False)
    assert (pickled / "transformer" / "diffusion_pytorch_model.bin").is_file()  # diffusers parts pickled
    gen = GeneratorConfig(model=str(pickled), device="cpu")
    with pytest.raises(ZireliaError, match="pickled weights") as caught:
        load_flux_pipeline(gen)
    assert "allow_pickle" in caught.value.hint
    assert load_flux_pipeline(gen, allow_pickle=True).transformer is not None

    # The stages (dataset, curation top-ups, critic) load it with the run's [run] allow_pickle.
    from zirelia_local.critic.renderers import FluxLoraRenderer
    from zirelia_local.dataset.flux import load_generator_pipeline

    config = load_config(write_config(tmp_path))
    config.generator.model = str(pickled)
    with pytest.raises(ZireliaError, match="pickled weights"):
        load_generator_pipeline(config)
    config.run.allow_pickle = True
    assert load_generator_pipeline(config).transformer is not None
    assert FluxLoraRenderer(config).pipe.transformer is not None


def test_require_safetensors_refuses_pickle_suffixes(tmp_path):
    from zirelia_local.common.security import require_safetensors

    for name in ("model.ckpt", "lora.pt", "pytorch_model.bin"):
        with pytest.raises(ZireliaError, match="pickled file"):
            require_safetensors(tmp_path / name, "model file")
        assert require_safetensors(tmp_path / name, "model file", allow_pickle=True) == tmp_path / name
    assert require_safetensors(tmp_path / "flux1-dev.safetensors", "model file").name == "flux1-dev.safetensors"
