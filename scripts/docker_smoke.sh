#!/usr/bin/env bash
# Build docker/Dockerfile and check the image the way a rented-box user runs it: as a non-root --user with
# host folders mounted, `zirelia doctor`, the demo end to end, a writable home cache, and bitsandbytes in
# the project's environment. Needs a Docker engine that can pull the base image (or a local stand-in for it).
#
#   scripts/docker_smoke.sh [IMAGE]            # IMAGE defaults to zirelia-local:smoke
#
# Build arguments, from the environment when set (docker/README.md, "Smoke test"):
#   BASE_IMAGE, TORCH, TORCH_INDEX_URL, ONNXRUNTIME_GPU, SD_SCRIPTS_REPO, SD_SCRIPTS_COMMIT
# Other settings:
#   SMOKE_SKIP_BUILD=1   check IMAGE as it is
#   SMOKE_USER=U:G       the --user to run as (default: yours; 1234:1234 if you are root)
#   DOCKER_BUILD_FLAGS   extra `docker build` flags (e.g. "--network host")
#   DOCKER_RUN_FLAGS     extra `docker run` flags (e.g. "--gpus all", or "--network none")
# Exit code 0: every step passed; otherwise the failing step is named.
set -euo pipefail

image="${1:-zirelia-local:smoke}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
read -r -a build_flags <<< "${DOCKER_BUILD_FLAGS:-}"
read -r -a run_flags <<< "${DOCKER_RUN_FLAGS:-}"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'docker_smoke: FAILED: %s\n' "$*" >&2; exit 1; }

if ! docker info > /dev/null 2>&1; then
    echo "docker_smoke: no Docker engine answers here (docker info failed); start one, or set DOCKER_HOST" >&2
    exit 2
fi

if [[ "${SMOKE_SKIP_BUILD:-}" != 1 ]]; then
    build_args=()
    for name in BASE_IMAGE TORCH TORCH_INDEX_URL ONNXRUNTIME_GPU SD_SCRIPTS_REPO SD_SCRIPTS_COMMIT; do
        if [[ -n "${!name:-}" ]]; then
            build_args+=(--build-arg "$name=${!name}")
        fi
    done
    step "build $image (${build_args[*]:-default build arguments})"
    started=$SECONDS
    DOCKER_BUILDKIT=1 docker build "${build_flags[@]}" "${build_args[@]}" -f "$repo/docker/Dockerfile" \
        -t "$image" "$repo" || fail "docker build"
    echo "built in $((SECONDS - started)) s"
fi

user="${SMOKE_USER:-$(id -u):$(id -g)}"
if [[ "${user%%:*}" == 0 ]]; then
    user=1234:1234  # the point is a user the image does not know, as `--user "$(id -u):$(id -g)"` gives
fi
work="$(mktemp -d)"
trap 'rm -rf "$work" || true' EXIT
mkdir -p "$work/hf" "$work/models" "$work/runs"
chmod 1777 "$work/hf" "$work/models" "$work/runs"  # writable by $user whoever owns the temp folder
mounts=(-v "$work/hf:/data/hf" -v "$work/models:/data/models" -v "$work/runs:/data/runs")
run=(docker run --rm --user "$user" "${run_flags[@]}" "${mounts[@]}")

step "zirelia doctor configs/demo.toml, as --user $user"
"${run[@]}" --entrypoint zirelia "$image" doctor configs/demo.toml || fail "zirelia doctor configs/demo.toml"

step "the demo (the image's default command), as --user $user"
started=$SECONDS
"${run[@]}" "$image" || fail "the demo"
[[ -s "$work/runs/demo/report/index.html" ]] || fail "the demo wrote no report in runs/demo/report/index.html"
[[ "$(stat -c %u "$work/runs/demo/report/index.html")" == "${user%%:*}" ]] ||
    fail "the report does not belong to uid ${user%%:*}"
echo "demo done in $((SECONDS - started)) s; report: runs/demo/report/index.html"

step "home cache writable, no onnxruntime telemetry, bitsandbytes in the project's environment"
"${run[@]}" --entrypoint python "$image" -c '
import os, stat, subprocess, sys
from pathlib import Path

home_cache = Path.home() / ".cache"
info = home_cache.stat()
assert info.st_uid == 1001 and stat.S_IMODE(info.st_mode) == 0o1777, (info.st_uid, oct(info.st_mode))
probe = home_cache / "torch" / f"written-by-{os.getuid()}"
probe.parent.mkdir(parents=True, exist_ok=True)
probe.write_text("ok")
import torch.hub
Path(torch.hub.get_dir()).mkdir(parents=True, exist_ok=True)

imported = subprocess.run([sys.executable, "-c", "import onnxruntime"], capture_output=True, text=True)
assert imported.returncode == 0 and "telemetry" not in imported.stderr, imported.stderr
assert not (home_cache / "Microsoft").exists(), "onnxruntime wrote its telemetry id"

import bitsandbytes
from zirelia_local.dataset.flux import bitsandbytes_problem
assert bitsandbytes_problem() is None, bitsandbytes_problem()
print("home cache", home_cache, "writable by uid", os.getuid(), "| bitsandbytes", bitsandbytes.__version__, "in", sys.prefix)
' || fail "home cache / bitsandbytes check"

step "all smoke checks passed for $image"
