#!/usr/bin/env bash
# The GPU check: run it once on a machine with a CUDA GPU, then put its table in RESULTS.md.
#
#   1. install as the README says (pip install -e ".[dev]"; an offline machine keeps what is installed),
#   2. the CUDA tests: pytest -m cuda (bf16 forward/backward of the default and RefCOCO configs, DDP
#      with one process over NCCL, the pinned uint8 loader, train.py on the GPU),
#   3. training throughput of configs/refcoco.yaml in bf16 at batch 8, 16 and 32 (Trainer.train_step:
#      img/s, peak memory, MFU from the counted FLOPs; random weights, nothing downloaded),
#   4. JPEG decoding of the realref photos: OpenCV (libjpeg-turbo) on one core vs torchvision's
#      decode_jpeg on the GPU,
#   5. the embedded default run (accelerate launch train.py: its 13-minute budget),
# and prints one table (also written with the raw figures under $OUT).
#
#   bash benchmarks/gpu_check.sh                  # everything, about 20 minutes
#   SKIP_INSTALL=1 SKIP_DEFAULT_RUN=1 bash benchmarks/gpu_check.sh
#   PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh  # dense bf16 peak for MFU when the GPU is not in the list
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: error: no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)" >&2
    exit 2
fi
mkdir -p "$OUT"
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "== GPU: ${GPU:-unknown}"

# 1. install
INSTALL="skipped (SKIP_INSTALL=1)"
if [ -z "${SKIP_INSTALL:-}" ]; then
    echo "== pip install -e .[dev]"
    if "$PY" -m pip install -q -e ".[dev]" >"$OUT/install.log" 2>&1; then
        INSTALL="pip install -e .[dev]: ok"
    elif "$PY" -m pip install -q --no-build-isolation --no-deps -e . >>"$OUT/install.log" 2>&1; then
        INSTALL="pip install -e .[dev] failed (offline?); --no-build-isolation --no-deps: ok (see $OUT/install.log)"
    else
        INSTALL="pip install failed (see $OUT/install.log); using the environment as it is"
    fi
fi
echo "   $INSTALL"

# 2. CUDA tests
echo "== pytest -m cuda"
"$PY" -m pytest -m cuda -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest_cuda.txt"
TESTS=$(tail -1 "$OUT/pytest_cuda.txt")

# 3. training throughput of the RefCOCO config
if [ -z "${PEAK_TFLOPS:-}" ]; then  # dense bf16 tensor-core peaks (vendor data sheets)
    case "$GPU" in
        *H200*|*H100*SXM*|*H100\ 80GB\ HBM3*) PEAK_TFLOPS=989 ;;
        *H100*PCIe*|*H100*) PEAK_TFLOPS=756 ;;
        *A100*) PEAK_TFLOPS=312 ;;
        *L40S*) PEAK_TFLOPS=362 ;;
        *A10G*|*A10*) PEAK_TFLOPS=125 ;;
        *) PEAK_TFLOPS= ;;
    esac
fi
for B in 8 16 32; do
    echo "== train_step.py configs/refcoco.yaml, batch $B, bf16"
    "$PY" benchmarks/train_step.py --config configs/refcoco.yaml --batch-size "$B" --warmup 5 --repeats 20 \
        ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"} --json "$OUT/train_b$B.json" train.mixed_precision=bf16 \
        2>&1 | tee "$OUT/train_b$B.txt" || echo "   batch $B failed (see $OUT/train_b$B.txt)"
done

# 4. JPEG decoding: one CPU core (what a loader worker has) vs the GPU
echo "== JPEG decode: OpenCV on one core vs torchvision decode_jpeg on the GPU"
"$PY" - "$OUT/decode.json" <<'EOF' 2>&1 | tee "$OUT/decode.txt"
import json, os, sys, time
from pathlib import Path
import cv2, torch
realref = Path(os.environ.get("REFSEG_REALREF") or Path.cwd().parent / "shared" / "realref") / "images" / "train2014"
files = sorted(realref.glob("*.jpg"))
if not files:
    print(f"no JPEGs under {realref} (set REFSEG_REALREF): decode comparison skipped")
    json.dump({}, open(sys.argv[1], "w")); sys.exit(0)
cv2.setNumThreads(1)
t0, n = time.perf_counter(), 0
while time.perf_counter() - t0 < 3:
    for f in files:
        cv2.imread(str(f)); n += 1
cpu = n / (time.perf_counter() - t0)
out = {"files": len(files), "opencv_one_core_img_s": cpu}
try:
    from torchvision.io import decode_jpeg, read_file
    data = [read_file(str(f)) for f in files] * 4
    decode_jpeg(data[:8], device="cuda"); torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 3:
        decode_jpeg(data, device="cuda"); n += len(data)
    torch.cuda.synchronize()
    out["torchvision_gpu_img_s"] = n / (time.perf_counter() - t0)
except Exception as e:  # torchvision without nvjpeg, or none at all
    out["torchvision_gpu_error"] = str(e).splitlines()[0]
print(out)
json.dump(out, open(sys.argv[1], "w"))
EOF

# 5. the embedded default
if [ -z "${SKIP_DEFAULT_RUN:-}" ]; then
    echo "== accelerate launch train.py (the embedded default, 13 minutes)"
    rm -rf "$OUT/default_run"
    "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no \
        --dynamo_backend no train.py --no-progress --output-dir "$OUT/default_run" 2>&1 | tee "$OUT/default_run.txt"
fi

# the table
"$PY" - "$OUT" "$GPU" "$INSTALL" "$TESTS" <<'EOF' | tee "$OUT/table.md"
import json, subprocess, sys, time
from pathlib import Path
out, gpu, install, tests = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rows = [("GPU", gpu or "unknown"), ("date, commit", f"{time.strftime('%Y-%m-%d')}, {commit or 'unknown'}"),
        ("install", install), ("pytest -m cuda", tests)]
for b in (8, 16, 32):
    f = out / f"train_b{b}.json"
    if not f.is_file():
        rows.append((f"refcoco.yaml bf16, batch {b}", "failed (see train_b%d.txt)" % b)); continue
    r = json.loads(f.read_text())
    mfu = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
    rows.append((f"refcoco.yaml bf16, batch {b}",
                 f"{r['images_per_s']:.1f} img/s, {1000 * r['step_s']:.0f} ms/step, peak {r.get('peak_memory_gb', 0):.1f} GB, "
                 f"{r['train_gflops_per_image']:.0f} GFLOP/img, {r['achieved_tflops']:.1f} TFLOP/s{mfu}"))
d = json.loads((out / "decode.json").read_text()) if (out / "decode.json").is_file() else {}
if d:
    gpu_rate = (f"{d['torchvision_gpu_img_s']:.0f} img/s" if "torchvision_gpu_img_s" in d
                else f"unavailable ({d.get('torchvision_gpu_error')})")
    rows.append(("JPEG decode (realref photos)", f"OpenCV 1 core {d['opencv_one_core_img_s']:.0f} img/s, "
                                                 f"torchvision GPU {gpu_rate}"))
s = out / "default_run" / "summary.json"
if s.is_file():
    r = json.loads(s.read_text())
    rows.append(("default run (13 min)", f"{r['steps']} steps in {r['time_train_s']:.0f} s training "
                                         f"({r['time_total_s']:.0f} s total), val mIoU {r['val']['mIoU']:.2f}, "
                                         f"oIoU {r['val']['oIoU']:.2f}"))
sys.path.insert(0, "benchmarks")
from _common import markdown_table
print(markdown_table(rows, "GPU check"))
EOF
