"""train.py end to end on a tiny refshapes set: run layout, resume equality, DDP, demo and evaluate."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY_OVERRIDES, TRAINED_RUN, max_weight_diff, run_script, score_independently
from conftest import tiny_train_args as _args

def test_run_directory_layout(trained_run):
    base, out, r = trained_run
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "state/trainer_state.json",
                 "state/model.safetensors", "best/model.safetensors", "best/config.yaml", "best/processor_config.json", "best/README.md",
                 "last/model.safetensors", "logs"]:
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == [3, 6]  # one periodic evaluation, one final
    assert records[-1]["final"] and records[-1]["num_samples"] > 0
    # the final evaluation scored the last weights on the whole val split: the numbers counted
    # independently from last/ (Predictor masks against the pycocotools ground truth) are the same
    want = score_independently(out / "last", base / "data" / "refshapes", "val")
    summary = json.loads((out / "summary.json").read_text())
    for key in ["oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "num_samples"]:
        assert records[-1][key] == pytest.approx(want[key], abs=1e-9) and summary["val"][key] == records[-1][key], key
    state = json.loads((out / "state" / "trainer_state.json").read_text())
    assert state["step"] == 6
    # the frozen text encoder's features were computed once for every training expression (and the
    # resume test below holds with them)
    samples = json.loads((base / "data" / "refshapes" / "refs(refshapes).json").read_text())
    train_sentences = {s["sent"] for ref in samples if ref["split"] == "train" for s in ref["sentences"]}
    assert 0 < summary["text_features"] <= len(train_sentences)
    # The final summary line names the metrics and the run directory.
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("done: 6 steps") and "mIoU" in last and str(out) in last
    # The generated dataset is in the refer layout.
    assert (base / "data" / "refshapes" / "refs(refshapes).json").is_file()


def test_a_bf16_run_scores_in_the_evaluation_precision(trained_run, tmp_path):
    """A bf16 run's final evaluation is scored in fp32 (eval.mixed_precision auto on a CPU), not under the
    bf16 autocast accelerate wraps the training forward in: its numbers are the Predictor's masks."""
    base, _, _ = trained_run
    out = tmp_path / "bf16"
    r = run_script(["train.py", "--no-progress", "--output-dir", out,
                    *_args(base / "data", "train.max_steps=2", "train.eval_every=100", "train.mixed_precision=bf16")])
    assert r.returncode == 0, r.stderr[-3000:]
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    want = score_independently(out / "last", base / "data" / "refshapes", "val")
    for key in ["oIoU", "mIoU", "P@0.5", "num_samples"]:
        assert final[key] == pytest.approx(want[key], abs=1e-9), key


def test_resume_gives_the_same_weights(trained_run, tmp_path):
    """Stop after 4 steps, resume to 6: the weights equal the uninterrupted 6-step run exactly (CPU)."""
    base, full, _ = trained_run
    out = tmp_path / "run"
    r = run_script(["train.py", "--no-progress", "--output-dir", out,
                    *_args(base / "data", *TRAINED_RUN, "train.stop_at_step=4")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped at step 4/6" in r.stdout and not (out / "last").exists()
    assert json.loads((out / "state" / "trainer_state.json").read_text())["step"] == 4
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", out])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout
    diff = max_weight_diff(full / "last", out / "last")
    assert diff == 0.0, f"resumed weights differ by {diff}"


# Everything random at once: stochastic depth, PWAM dropout, a trainable text layer (its dropout on),
# photometric augmentation, and 4 training images (a few batches per epoch): 7 steps cross epochs.
REGULARISED = ("model.vision.drop_path_rate=0.3", "model.fusion.dropout=0.3", "model.text.trainable_layers=[5]",
               "data.augment=true", "data.refshapes.num_train_images=4", "train.max_steps=7", "train.eval_every=100",
               "train.checkpoint_every=100")


def test_resume_restores_the_random_state(tmp_path):
    """Stopped at step 3, mid-epoch, resumed to 7: equal to the uninterrupted run only if the dropout and
    drop-path draws go on from the saved random state (a resume that reseeded would differ)."""
    data = tmp_path / "data"
    full, out = tmp_path / "full", tmp_path / "run"
    r = run_script(["train.py", "--no-progress", "--output-dir", full, *_args(data, *REGULARISED)])
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((full / "state" / "trainer_state.json").read_text())
    assert state["step"] == 7 and state["epoch"] >= 2, state  # more than one epoch
    r = run_script(["train.py", "--no-progress", "--output-dir", out, *_args(data, *REGULARISED, "train.stop_at_step=3")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "state" / "trainer_state.json").read_text())["step"] == 3
    r = run_script(["train.py", "--no-progress", "--resume", "--output-dir", out])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming {out} at step 3/7" in r.stdout
    diff = max_weight_diff(full / "last", out / "last")
    assert diff == 0.0, f"resumed weights differ by {diff}"


def test_resume_with_nothing_to_resume(tmp_path):
    r = run_script(["train.py", "--resume", "--output-dir", tmp_path / "nothing"])
    assert r.returncode == 2
    assert "nothing to resume" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_config_is_one_line(tmp_path):
    r = run_script(["train.py", "train.max_step=3"])
    assert r.returncode == 2 and "did you mean 'train.max_steps'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    # options may come after overrides too
    r = run_script(["train.py", "train.max_step=3", "--no-progress", "train.lr=1e-4"])
    assert r.returncode == 2 and "did you mean 'train.max_steps'" in r.stderr
    r = run_script(["train.py", "--config", tmp_path / "missing.yaml"])
    assert r.returncode == 2 and "not found" in r.stderr


def test_mixed_precision_auto_follows_the_cpu_flags():
    """`auto` picks bf16 on CPUs with native bf16 (the project's EPYC has avx512_bf16), fp32 elsewhere."""
    from refseg.engine.trainer import resolve_mixed_precision

    assert resolve_mixed_precision("auto", True, bf16_flags=[]) == "no"
    assert resolve_mixed_precision("auto", True, bf16_flags=["avx512_bf16"]) == "bf16"
    assert resolve_mixed_precision("auto", True, bf16_flags=["amx_bf16"]) == "bf16"
    for setting in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(setting, True, bf16_flags=[]) == setting


@pytest.fixture
def fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_bf16_training_step_on_any_cpu(fresh_accelerate_state):
    """What `auto` picks on a bf16 CPU, forced: it trains on every CPU (emulated where there are no bf16 units)."""
    import torch

    from refseg.config import load_config
    from refseg.engine.trainer import Trainer

    cfg = load_config(overrides=[*TINY_OVERRIDES, "train.mixed_precision=bf16", "train.batch_size=2"])
    trainer = Trainer(cfg, cpu=True, progress=False).setup(data=False)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.out is None  # no run directory
    dtypes = []
    first_linear = next(m for m in trainer.unwrapped.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8),
             "input_ids": torch.randint(1000, 2000, (2, 6), generator=g),
             "attention_mask": torch.ones(2, 6, dtype=torch.long),
             "labels": (torch.rand(2, 64, 64, generator=g) > 0.5).long()}
    before = [p.detach().clone() for p in trainer.unwrapped.parameters() if p.requires_grad]
    loss = trainer.train_step(batch)
    assert loss is not None and np.isfinite(loss) and dtypes and dtypes[0] == torch.bfloat16
    after = [p.detach() for p in trainer.unwrapped.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_help():
    for script in ["train.py", "demo.py", "evaluate.py"]:
        r = run_script([script, "--help"])
        assert r.returncode == 0 and "usage" in r.stdout.lower()


@pytest.mark.slow
def test_ddp_two_cpu_processes(trained_run, tmp_path):
    """`torchrun --nproc_per_node 2 train.py --cpu` trains with gloo and writes one run, in the one default
    directory the main process chose; a second launch into it is refused by every process, printed once.

    (`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x: its CPU
    multi-process launcher is mpirun; torchrun is what starts two here.)"""
    base, _, _ = trained_run
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", REPO / "train.py", "--cpu",
              "--no-progress"]
    args = _args(base / "data", "train.max_steps=3", "train.eval_every=100", "train.cpu_threads=1")
    r = run_script([*launch, *args], cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = (tmp_path / "runs").iterdir()  # both processes trained into the same new directory
    assert (out / "last" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "state").glob("random_states_*")) == ["random_states_0.pkl",
                                                                              "random_states_1.pkl"]
    assert r.stdout.count("done: 3 steps") == 1  # only the main process prints the summary
    r = run_script([*launch, "--output-dir", out, *args], cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and r.stderr.count("already holds a run") == 1, r.stderr[-3000:]


def test_demo_writes_overlay_at_image_size(trained_run, tmp_path):
    base, out, _ = trained_run
    image = sorted((base / "data" / "refshapes" / "images").glob("*"))[0]
    o, m = tmp_path / "overlay.png", tmp_path / "mask.png"
    r = run_script(["demo.py", "--image", image, "--text", "the red circle", "--checkpoint", out / "best",
                    "--out", o, "--mask", m])
    assert r.returncode == 0, r.stderr[-2000:]
    import cv2

    src = cv2.imread(str(image))
    assert cv2.imread(str(o)).shape == src.shape
    mask = cv2.imread(str(m), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == src.shape[:2] and set(np.unique(mask)) <= {0, 255}
    assert str(o) in r.stdout
    # a refshapes image: the note that the checkpoint knows only synthetic shapes is not printed here
    assert not [line for line in r.stdout.splitlines() if line.startswith("note:")], r.stdout


def test_demo_uses_newest_run_by_default(trained_run, tmp_path):
    base, out, _ = trained_run
    (tmp_path / "runs").mkdir()
    shutil.copytree(out / "best", tmp_path / "runs" / "x" / "best")
    image = sorted((base / "data" / "refshapes" / "images").glob("*"))[0]
    r = run_script([Path(__file__).resolve().parents[1] / "demo.py", "--image", image, "--text", "the square"],
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "runs/x/best" in r.stdout
    assert (tmp_path / f"{image.stem}_overlay.png").is_file()


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not_image", "blank_text", "no_checkpoint"])
def test_demo_bad_input_is_one_line(trained_run, tmp_path, case):
    base, out, _ = trained_run
    image = sorted((base / "data" / "refshapes" / "images").glob("*"))[0]
    text, ckpt = "the red circle", out / "best"
    if case == "missing":
        image = tmp_path / "nope.jpg"
    elif case == "directory":
        image = tmp_path
    elif case == "empty":
        image = tmp_path / "empty.png"
        image.write_bytes(b"")
    elif case == "not_image":
        image = tmp_path / "x.jpg"
        image.write_text("hello")
    elif case == "blank_text":
        text = " \t\n "
    elif case == "no_checkpoint":
        ckpt = tmp_path / "no_ckpt"
    r = run_script(["demo.py", "--image", image, "--text", text, "--checkpoint", ckpt])
    assert r.returncode == 2, (case, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_evaluate_cli_on_the_trained_run(trained_run, tmp_path):
    base, out, _ = trained_run
    res = tmp_path / "m.json"
    r = run_script(["evaluate.py", "--checkpoint", out / "best", "--split", "val", "--out", res,
                    "--data-root", base / "data", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(res.read_text())
    assert {"oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9", "num_samples"} <= set(got)
    assert "per-type" in r.stdout


def test_demo_odd_text_and_grayscale_image(trained_run, tmp_path):
    """Long, non-Latin, emoji, tab/newline text on a grayscale image: works, overlay at image size."""
    base, out, _ = trained_run
    import cv2

    image = sorted((base / "data" / "refshapes" / "images").glob("*"))[0]
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.imread(str(image), cv2.IMREAD_GRAYSCALE))
    text = "the\tred circle\nنقطة 红色的圆 😀 " + "very " * 60 + "far left"
    o = tmp_path / "o.png"
    r = run_script(["demo.py", "--image", gray, "--text", text, "--checkpoint", out / "best", "--out", o])
    assert r.returncode == 0, r.stderr[-2000:]
    assert cv2.imread(str(o)).shape[:2] == cv2.imread(str(gray), cv2.IMREAD_GRAYSCALE).shape


def test_non_finite_losses_are_skipped_then_stop(trained_run, tmp_path):
    """An absurd learning rate makes the weights blow up: steps are skipped, then training stops cleanly."""
    base, _, _ = trained_run
    r = run_script(["train.py", "--no-progress", "--output-dir", tmp_path / "nan",
                    *_args(base / "data", "train.max_steps=30", "train.lr=1e30", "train.warmup_steps=0",
                           "train.grad_clip=null", "train.max_bad_steps=3", "train.eval_every=1000")])
    assert r.returncode != 0
    assert "non-finite loss" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "step skipped" in r.stdout + r.stderr
