"""Reliability: huge images in bounded memory, --debug on every CLI, files that try to run code."""
from __future__ import annotations

import json
import pickle
import shutil
import textwrap

import numpy as np
import pytest

from conftest import REPO, run_script
from test_refer import _Evil  # unpickling it runs `touch marker`


# ---------------------------------------------------------------------------------------------
# Huge images
# ---------------------------------------------------------------------------------------------


def test_huge_image_demo_bounded_memory(trained_run, tmp_path):
    """A 6000x4000 photo: overlay and mask at full size, peak memory a few times the image itself."""
    import cv2

    _, out, _ = trained_run
    rng = np.random.default_rng(0)
    small, huge = tmp_path / "small.jpg", tmp_path / "huge.jpg"
    cv2.imwrite(str(small), rng.integers(0, 255, (400, 600, 3), dtype=np.uint8))
    cv2.imwrite(str(huge), cv2.resize(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), (6000, 4000)))
    # One process runs the demo on the small photo, then on the huge one: the growth of its peak RSS
    # is what the huge photo costs beyond the model and libraries.
    script = textwrap.dedent(f"""
        import importlib.util, resource, sys
        spec = importlib.util.spec_from_file_location("demo", {str(REPO / 'demo.py')!r})
        demo = importlib.util.module_from_spec(spec); spec.loader.exec_module(demo)
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        common = ["--text", "the red circle", "--checkpoint", {str(out / 'best')!r}, "--device", "cpu"]
        assert demo.main(["--image", {str(small)!r}, "--out", {str(tmp_path / 's.png')!r}, *common]) == 0
        base = peak()
        assert demo.main(["--image", {str(huge)!r}, "--out", {str(tmp_path / 'h.png')!r},
                          "--mask", {str(tmp_path / 'hm.png')!r}, *common]) == 0
        print("GROWTH", peak() - base)
    """)
    r = run_script(["-c", script])
    assert r.returncode == 0, r.stderr[-3000:]
    growth = int(r.stdout.split("GROWTH")[-1].split()[0])
    image_bytes = 6000 * 4000 * 3
    # Measured: about 2.8x the RGB bytes (decode, mask margin, overlay, PNG encode); the old
    # float32 overlay alone took 8x.
    assert growth < 5 * image_bytes, f"peak memory grew by {growth / 2**20:.0f} MiB"
    assert cv2.imread(str(tmp_path / "h.png")).shape == (4000, 6000, 3)
    assert cv2.imread(str(tmp_path / "hm.png"), cv2.IMREAD_GRAYSCALE).shape == (4000, 6000)


def test_overlay_blend_matches_the_float_formula():
    """The banded uint8 blend equals image*(1-a) + tint*a, rounded, inside the mask; untouched outside."""
    from refseg.visualize import TINT, overlay

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (600, 40, 3), dtype=np.uint8)
    mask = np.zeros((600, 40), bool)
    mask[10:300, 5:20] = mask[250:590, 15:38] = True  # spans several 256-row bands
    got = overlay(image, mask, text=None, alpha=0.45)
    want = np.round(image.astype(np.float64) * 0.55 + np.array(TINT) * 0.45)
    import cv2

    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)  # off the outline
    assert np.abs(got[inner].astype(int) - want[inner]).max() <= 1
    assert (got[:, 0] == image[:, 0]).all()


# ---------------------------------------------------------------------------------------------
# --debug on every command line
# ---------------------------------------------------------------------------------------------

CLI_BAD_INPUTS = {
    "demo": ["demo.py", "--image", "/no/such/image.jpg", "--text", "the dog"],
    "evaluate": ["evaluate.py", "--checkpoint", "/no/such/checkpoint", "--split", "val"],
    "train": ["train.py", "train.max_stepz=3"],
    "refshapes": ["-m", "refseg.data.refshapes", "--train", "-3", "--root", "/tmp/never-written"],
    "check": ["-m", "refseg.data.check", "--data-root", "/no/such/data"],
    "convert": ["-m", "refseg.convert", "lavt", "/no/such/refcoco.pth", "--text-model", "bundled-minilm",
                "--out", "/tmp/never-written"],
}


@pytest.mark.parametrize("cli", sorted(CLI_BAD_INPUTS))
def test_bad_input_is_one_line_and_debug_shows_the_traceback(cli):
    args = CLI_BAD_INPUTS[cli]
    r = run_script(args)
    assert r.returncode == 2, (cli, r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in r.stderr, r.stderr
    r = run_script([*args, "--debug"])
    assert r.returncode != 0 and "Traceback (most recent call last)" in r.stderr, r.stderr[-2000:]


def test_demo_device_without_the_hardware_is_one_line(trained_run, tmp_path):
    """demo.py --device cuda on a machine without a GPU, or a device name that is none: one line, exit
    2, before the model is loaded (as app.py)."""
    import torch
    from PIL import Image

    _, out, _ = trained_run
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "p.png")
    cases = {"gpu:0": "not a device name"}
    if not torch.cuda.is_available():
        cases["cuda"] = "no CUDA device is available here"
    else:
        cases[f"cuda:{torch.cuda.device_count()}"] = "CUDA device(s)"
    for device, expect in cases.items():
        r = run_script(["demo.py", "--image", tmp_path / "p.png", "--text", "the red one", "--checkpoint",
                        out / "best", "--device", device, "--out", tmp_path / "o.png"])
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0].startswith("demo.py: error: --device") and expect in lines[0], lines
        assert not (tmp_path / "o.png").exists()


def test_demo_says_a_refshapes_model_knows_only_shapes_on_other_images(trained_run, tmp_path):
    """The note that a refshapes-trained checkpoint knows only synthetic shapes: printed for a photo,
    not for one of refshapes' own images."""
    from PIL import Image

    base, out, _ = trained_run
    own = sorted((base / "data" / "refshapes" / "images").iterdir())[0]
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.png")
    for image, noted in [(own, False), (tmp_path / "photo.png", True)]:
        r = run_script([REPO / "demo.py", "--image", image, "--text", "the red one", "--checkpoint", out / "best",
                        "--out", tmp_path / "o.png"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        assert ("trained on refshapes (synthetic shapes)" in r.stdout) == noted, (image, r.stdout)


def test_usage_errors_are_one_line():
    r = run_script(["evaluate.py", "--checkpoint", "x"])  # --split missing
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["evaluate.py: error: the following arguments are required: --split "
                                             "(see --help)"]


# ---------------------------------------------------------------------------------------------
# Files that try to run code
# ---------------------------------------------------------------------------------------------


def _payload_bytes(marker) -> bytes:
    return pickle.dumps({"weight": _Evil(marker)})


@pytest.fixture
def checkpoint_copy(trained_run, tmp_path):
    _, out, _ = trained_run
    ck = tmp_path / "ckpt"
    shutil.copytree(out / "best", ck)
    return ck


def test_pickle_in_place_of_safetensors_is_refused(checkpoint_copy, tmp_path):
    from refseg.models import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    (checkpoint_copy / "model.safetensors").write_bytes(_payload_bytes(marker))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_checkpoint(checkpoint_copy)
    assert not marker.exists()


def _corrupt(data: bytes, how: str) -> bytes:
    """A real safetensors file (8-byte little-endian header length, JSON header, tensor bytes) damaged."""
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    if how == "truncated":  # a copy cut short: the header promises bytes that are not there
        return data[: 8 + n + (len(data) - 8 - n) // 2]
    if how == "garbled_header":  # bytes overwritten inside the JSON header
        return data[:9] + b"@" * 16 + data[25:]
    if how == "header_cut":  # the file ends inside its header
        return data[: 8 + n // 2]
    raise ValueError(how)


@pytest.mark.parametrize("how,cause", [
    ("truncated", "incomplete metadata, file not fully covered"),
    ("garbled_header", "invalid JSON in header"),
    ("header_cut", "invalid header length"),
])
def test_corrupt_safetensors_is_a_checkpoint_error(checkpoint_copy, how, cause):
    """A damaged model.safetensors: one CheckpointError naming the file and safetensors' reason."""
    import re

    from refseg.models import CheckpointError, load_checkpoint

    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(_corrupt(weights.read_bytes(), how))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(checkpoint_copy)
    assert re.fullmatch(re.escape(f"{weights}: cannot read weights (Error while deserializing header: {cause}")
                        + r".*\)", str(e.value)), str(e.value)


def test_python_tag_in_config_yaml_is_refused(checkpoint_copy, tmp_path):
    from refseg.models import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    (checkpoint_copy / "config.yaml").write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(CheckpointError, match="not valid YAML"):
        load_checkpoint(checkpoint_copy)
    assert not marker.exists()


@pytest.mark.parametrize("model_type", ["bert", "evil-model"])
def test_remote_code_in_the_text_config_never_runs(checkpoint_copy, tmp_path, model_type):
    """text/config.json pointing at custom code (auto_map): the code is never imported."""
    from refseg.models import CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (checkpoint_copy / "text" / name).write_text(code)
    cfg_path = checkpoint_copy / "text" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_type"] = model_type
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    cfg_path.write_text(json.dumps(cfg))
    if model_type == "bert":  # a known architecture: loads with transformers' own code
        model, _ = load_checkpoint(checkpoint_copy)
        assert type(model.text_encoder.model).__module__.startswith("transformers.")
    else:
        with pytest.raises(CheckpointError):
            load_checkpoint(checkpoint_copy)
    assert not marker.exists()


def test_pickle_payload_as_text_encoder_weights_is_refused(tmp_path):
    """A local text-encoder folder whose pytorch_model.bin runs code: weights_only refuses it."""
    from transformers import BertConfig

    from refseg.models.text import TextEncoder

    marker = tmp_path / "pwned"
    folder = tmp_path / "text"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               vocab_size=100).save_pretrained(str(folder))
    (folder / "pytorch_model.bin").write_bytes(_payload_bytes(marker))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):  # torch.load(weights_only=True)
        TextEncoder(str(folder))
    assert not marker.exists()


def test_pickle_payload_as_vision_weights_is_refused(tmp_path):
    """model.vision.pretrained=<.pth that runs code>: torch.load(weights_only=True) refuses it."""
    import torch

    from refseg.models.xcit import XCiTColumnar, load_xcit_pretrained

    marker = tmp_path / "pwned"
    for suffix in (".pth", ".bin", ".pt"):
        path = tmp_path / f"evil{suffix}"
        torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(marker)}, str(path))
        enc = XCiTColumnar("xcit_nano_12_p8", embed_dim=32, depth=4, num_heads=2)
        with pytest.raises(ValueError, match="cannot read"):
            load_xcit_pretrained(enc, str(path))
        assert not marker.exists()
