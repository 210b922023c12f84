#!/usr/bin/env bash
# Collect the wheels an offline GPU box needs, for its Python version and platform (benchmarks/README.md).
#
#   scripts/wheelhouse.sh [--python-version 3.11] [--platform TAG]... [--out wheelhouse]
#                         [--sd-scripts PATH] [--also PACKAGE]... [--list]
#
# OUT/            zirelia-local's dependencies (pyproject.toml), pinned in OUT/requirements.txt, plus setuptools
#                 and wheel so `pip install --no-index` can build the project itself there;
# OUT/sd-scripts/ with --sd-scripts PATH: that checkout's requirements.txt (its own pins, for its own venv),
#                 pinned in OUT/sd-scripts/requirements.txt.
# PyTorch is left out of both (torch, torchvision, triton, nvidia-*): the GPU box brings the CUDA build that
# matches its driver. --also adds a package (e.g. bitsandbytes, for the nf4 mode); --list only resolves and
# prints what would be downloaded. Only wheels are taken (pip download --only-binary=:all:), so nothing is
# built for the wrong platform; a direct requirement published only as source (face-recognition-models, dlib's
# model files; some of sd-scripts' pins) is taken as its source archive, built on the box with the wheelhouse's
# setuptools (its own dependencies, if any, are not collected: pip names them there if one is missing).
set -euo pipefail

PYTHON_VERSION=3.11
# Default platform tags: a glibc 2.28+ Linux (Ubuntu 20.04+, Debian 10+) on x86-64; pip takes each tag as given.
PLATFORMS=()
OUT=wheelhouse
SD_SCRIPTS=""
ALSO=()
LIST_ONLY=0
PYTHON=${PYTHON:-python3}  # the interpreter whose pip resolves and downloads (any 3.11+)
PIP=("$PYTHON" -m pip)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYTHON_VERSION=$2; shift 2 ;;
    --platform) PLATFORMS+=("$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --sd-scripts) SD_SCRIPTS=$2; shift 2 ;;
    --also) ALSO+=("$2"); shift 2 ;;
    --list) LIST_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "wheelhouse.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

[ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 linux_x86_64)
TARGET=(--only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp)
for tag in "${PLATFORMS[@]}"; do TARGET+=(--platform "$tag"); done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Resolve REQUIREMENTS for the target (pip's dry run, metadata only), drop PyTorch's family, and download the
# rest as wheels with --no-deps: `pip download` alone would also fetch torch and its CUDA libraries. A direct
# requirement with no wheel for the target moves to the source list and the resolution is tried again.
collect() {
  local requirements=$1 dest=$2 name=$3 missing
  : > "$WORK/$name.source"
  for _ in 1 2 3 4 5 6 7 8; do
    if "${PIP[@]}" install --quiet --dry-run --ignore-installed --target "$WORK/target-$name" "${TARGET[@]}" \
      --report "$WORK/$name.json" -r "$requirements" 2> "$WORK/$name.err"; then
      missing=""
      break
    fi
    missing=$(sed -n 's/.*No matching distribution found for \([A-Za-z0-9_.-]*\).*/\1/p' "$WORK/$name.err" | head -1)
    if [ -z "$missing" ] || ! grep -q -i -E "^\s*${missing}([^A-Za-z0-9_.-]|$)" "$requirements"; then
      grep -v "^WARNING: Location" "$WORK/$name.err" >&2
      exit 1
    fi
    grep -i -E "^\s*${missing}([^A-Za-z0-9_.-]|$)" "$requirements" >> "$WORK/$name.source"
    grep -v -i -E "^\s*${missing}([^A-Za-z0-9_.-]|$)" "$requirements" > "$requirements.next"
    mv "$requirements.next" "$requirements"
  done
  [ -z "$missing" ] || { echo "wheelhouse.sh: too many requirements without wheels" >&2; exit 1; }
  "$PYTHON" - "$WORK/$name.json" "$WORK/$name.pins" <<'PY'
import json, re, sys
report = json.load(open(sys.argv[1]))
skip = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton|nvidia-.*)$")
pins = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in report["install"]
              if not skip.match(item["metadata"]["name"].lower()))
open(sys.argv[2], "w").write("\n".join(pins) + "\n")
PY
  echo "$name: $(wc -l < "$WORK/$name.pins") wheels for Python $PYTHON_VERSION on ${PLATFORMS[0]} (PyTorch left out)"
  [ ! -s "$WORK/$name.source" ] || echo "$name: source only (built on the box): $(tr '\n' ' ' < "$WORK/$name.source")"
  if [ "$LIST_ONLY" = 1 ]; then sed 's/^/  /' "$WORK/$name.pins"; return; fi
  mkdir -p "$dest"
  "${PIP[@]}" download --quiet --no-deps "${TARGET[@]}" -d "$dest" -r "$WORK/$name.pins"
  [ ! -s "$WORK/$name.source" ] || "${PIP[@]}" download --quiet --no-deps --no-binary :all: -d "$dest" -r "$WORK/$name.source"
  cat "$WORK/$name.pins" "$WORK/$name.source" > "$dest/requirements.txt"
  echo "  -> $dest ($(du -sh "$dest" | cut -f1))"
}

"$PYTHON" - "$REPO/pyproject.toml" "$WORK/project.txt" "${ALSO[@]}" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] + sys.argv[3:]
keep = [d for d in deps if not re.match(r"^(torch|torchvision)([^A-Za-z0-9_.-]|$)", d)] + ["setuptools>=77", "wheel"]
open(sys.argv[2], "w").write("\n".join(keep) + "\n")
PY
collect "$WORK/project.txt" "$OUT" project

if [ -n "$SD_SCRIPTS" ]; then
  [ -f "$SD_SCRIPTS/requirements.txt" ] || { echo "wheelhouse.sh: $SD_SCRIPTS/requirements.txt not found" >&2; exit 2; }
  # Its `-e .` (the `library` package) is installed from the checkout itself; torch comes with the box.
  grep -v -E '^\s*(-e|#|$)|^\s*(torch|torchvision)\b' "$SD_SCRIPTS/requirements.txt" > "$WORK/sd-scripts.txt"
  collect "$WORK/sd-scripts.txt" "$OUT/sd-scripts" sd-scripts
fi
