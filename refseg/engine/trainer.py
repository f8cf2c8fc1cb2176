"""The training loop: accelerate (CPU, one GPU or many), AdamW + poly LR, periodic evaluation.

Run directory (``runs/<name>/``)::

    config.yaml        the full run config
    state/             resumable state: model/optimizer/RNG (accelerate) + trainer_state.json
    best/  last/       checkpoint directories (``RefSegModel.save_pretrained``)
    metrics.jsonl      one JSON object per evaluation
    logs/              TensorBoard events

Every directory is written to a temporary name first and renamed, so an interrupted save never
leaves a checkpoint that ``--resume`` would trust.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from ..config import Config
from ..errors import UserError
from ..utils import atomic_directory, recover_directory
from .losses import SegmentationLoss
from .schedule import parameter_groups, poly_warmup_lambda, steps_within_budget

TRAINER_STATE = "trainer_state.json"
UNPLANNED = 10**9  # max_steps of a time-budgeted run before its first fit


# ---------------------------------------------------------------------------------------------
# Deterministic, resumable data order
# ---------------------------------------------------------------------------------------------


class EpochBatchSampler(Sampler):
    """Batches of a seeded permutation for one epoch, sharded by process, resumable mid-epoch.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches the
    uninterrupted run would have seen; ``skip`` drops the batches already consumed.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, epoch: int,
                 rank: int = 0, world_size: int = 1, skip: int = 0):
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.epoch, self.rank, self.world_size, self.skip = seed, epoch, rank, world_size, skip

    def global_batches(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return max(0, self.global_batches() - self.skip)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.num_items, generator=g).tolist()
        step = self.batch_size * self.world_size
        for b in range(self.skip, self.global_batches()):
            chunk = perm[b * step:(b + 1) * step]
            yield chunk[self.rank::self.world_size]


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def resolve_mixed_precision(setting: str, use_cpu: bool) -> str:
    """``auto``: bf16 where the hardware runs it fast (recent CPUs, Ampere+ GPUs), else fp32."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and not use_cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "no"
    # bf16 autocast is only a win with native bf16/AMX instructions; emulated it is slower.
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no"


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed
    best_metric: float = -1.0
    best_step: int = -1
    skipped_steps: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumes
    planned_steps: int = 0  # schedule length fitted to train.max_minutes (0: not fitted yet)

    def save(self, path: Path, scheduler) -> None:
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        path.write_text(json.dumps({**self.__dict__, "scheduler": sched}, indent=1))

    @classmethod
    def load(cls, path: Path, scheduler) -> "TrainerState":
        data = json.loads(path.read_text())
        sched = data.pop("scheduler")
        sched["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
        scheduler.load_state_dict(sched)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def latest_run(runs_dir: str | Path = "runs") -> Path | None:
    """The most recently modified run directory that holds resumable state (used by ``--resume``)."""
    runs = [p for p in Path(runs_dir).glob("*") if p.is_dir() and recover_directory(p / "state")
            and (p / "state" / TRAINER_STATE).is_file()]
    return max(runs, key=lambda p: (p / "state" / TRAINER_STATE).stat().st_mtime) if runs else None


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def resolve_run_dir(output_dir: str | Path | None, resume: bool) -> Path:
    """The run directory: the given one, the newest resumable run (``--resume`` alone) or a new one."""
    if output_dir is not None:
        out = Path(output_dir)
        if resume:
            recover_directory(out / "state")  # a kill mid-swap may have left only the previous state
        if resume and not (out / "state" / TRAINER_STATE).is_file():
            raise UserError(f"--resume: nothing to resume in {out} (no saved state there)")
        return out
    if resume:
        found = latest_run()
        if found is None:
            raise UserError("--resume: nothing to resume (no run with saved state under runs/; "
                            "name one with --output-dir)")
        return found
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def train(cfg: Config, output_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, cpu: bool | None = None) -> dict:
    """Train ``cfg`` and return a summary dict (final val metrics, paths, timings).

    With ``resume`` the run continues from ``<output_dir>/state`` (pass the run's own config).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from ..data.dataset import RefSegDataset, collate, open_source
    from ..models import build_model
    from ..models.text import load_tokenizer
    from .evaluate import evaluate

    t_start = time.time()
    tc = cfg.train
    # Every process must agree on the run directory (a timestamped name could differ by a second),
    # and accelerate's TensorBoard tracker needs it before the Accelerator exists.
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    pstate = PartialState(cpu=bool(cpu))
    holder = [str(resolve_run_dir(output_dir, resume)) if pstate.is_main_process else None]
    if pstate.num_processes > 1:
        broadcast_object_list(holder, from_process=0)
    out = Path(holder[0])
    state_dir = out / "state"
    use_cpu = bool(cpu) or not torch.cuda.is_available()
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(tc.mixed_precision, use_cpu),
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        cpu=bool(cpu),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    is_main = accelerator.is_main_process
    set_seed(tc.seed, device_specific=False)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(tc.cpu_threads, _local_world_size()))

    # ---- data ------------------------------------------------------------------------------
    t0 = time.time()
    if cfg.data.name == "refshapes":
        from ..data.refshapes import ensure_refshapes
        with accelerator.main_process_first():
            ensure_refshapes(cfg.data, progress=progress and is_main)
    source = open_source(cfg.data)
    time_data = time.time() - t0
    tokenizer = load_tokenizer(cfg.model.text.name)
    semantic = cfg.loss.semantic_weight > 0
    train_ds = RefSegDataset(source, cfg.data.train_split, tokenizer, cfg.data.image_size,
                             cfg.model.text.max_tokens, train=True, augment=cfg.data.augment,
                             seed=tc.seed, semantic=semantic)  # refuses a source without load_semantic
    if semantic:
        _fit_semantic_classes(cfg, source)
    val_ds = RefSegDataset(source, cfg.data.val_split, tokenizer, cfg.data.image_size,
                           cfg.model.text.max_tokens, train=False)
    val_subset = val_ds
    if cfg.data.max_val_samples and len(val_ds) > cfg.data.max_val_samples:
        idx = np.random.default_rng(0).choice(len(val_ds), cfg.data.max_val_samples, replace=False)
        val_subset = torch.utils.data.Subset(val_ds, sorted(idx.tolist()))

    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = len(train_ds) // (tc.batch_size * world)
    if per_epoch < 1:
        raise UserError(f"the training split has {len(train_ds)} refs: fewer than one global batch "
                        f"({tc.batch_size} x {world} processes)")
    steps_per_epoch = max(1, per_epoch // tc.gradient_accumulation_steps)
    # budget: the schedule is fitted to train.max_minutes as the run measures its own speed
    budget = tc.max_minutes * 60.0 if (tc.max_epochs is None and tc.max_steps is None) else None
    max_steps = tc.max_epochs * steps_per_epoch if tc.max_epochs else (tc.max_steps or UNPLANNED)

    # ---- model and optimiser ----------------------------------------------------------------
    model = build_model(cfg, load_pretrained=not resume)
    criterion = SegmentationLoss(cfg.loss.class_weights, cfg.loss.dice_weight, cfg.loss.semantic_weight,
                                 cfg.loss.deep_supervision_weight)
    # fused: one kernel per step instead of a Python loop over ~500 tensors (6x faster on CPU)
    optimizer = torch.optim.AdamW(parameter_groups(model, tc.lr, tc.weight_decay, tc.text_lr),
                                  lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_warmup_lambda(lambda: max_steps, tc.warmup_steps, tc.poly_power))
    model, optimizer = accelerator.prepare(model, optimizer)
    criterion = criterion.to(accelerator.device)

    st = TrainerState()
    if resume:
        accelerator.load_state(str(state_dir))
        st = TrainerState.load(state_dir / TRAINER_STATE, scheduler)
        if budget is not None and st.planned_steps:
            max_steps, budget = st.planned_steps, None  # keep the resumed run's schedule
        if is_main:
            print(f"resuming {out} at step {st.step}/{max_steps}")
            _drop_records_after(out / "metrics.jsonl", st.step)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        accelerator.init_trackers("tb", config={"lr": tc.lr, "batch_size": tc.batch_size})
    unwrapped = accelerator.unwrap_model(model)

    def save_state() -> None:
        # Every process writes into the staging directory (its own RNG file); the main process
        # then swaps it in atomically, so `state/` is always a complete checkpoint.
        staging = out / "state.staging"
        if is_main and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging), safe_serialization=True)
        accelerator.wait_for_everyone()
        if is_main:
            st.save(staging / TRAINER_STATE, scheduler)
            with atomic_directory(state_dir) as tmp:
                for f in staging.iterdir():
                    os.replace(f, tmp / f.name)
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()

    eval_times: list[float] = []
    fit_anchor: list[tuple[int, float]] = []  # (step, st.elapsed) once the loader is warm

    def plan_steps() -> None:
        """Fit max_steps to what is left of the time budget (all processes get the same number)."""
        nonlocal max_steps
        (s0, e0), = fit_anchor
        step_s = (st.elapsed - e0) / max(1, st.step - s0)
        per_image = step_s / (tc.batch_size * world * tc.gradient_accumulation_steps)
        # before the first evaluation: forward-only at eval.batch_size runs ~3x faster than training
        eval_s = (sum(eval_times) / len(eval_times)) if eval_times else 0.4 * per_image * len(val_subset) / world
        final_s = eval_s * len(val_ds) / max(1, len(val_subset))
        planned = [steps_within_budget(st.step, budget - (time.time() - t_start), step_s, eval_s,
                                       tc.eval_every, final_s)]
        if world > 1:
            broadcast_object_list(planned, from_process=0)
        if planned[0] != max_steps and is_main:
            bar.write(f"step {st.step}: {step_s:.2f} s/step, {planned[0]} steps fit train.max_minutes="
                      f"{tc.max_minutes:g}" + ("" if max_steps == UNPLANNED else f" (was {max_steps})"))
        max_steps = st.planned_steps = planned[0]
        bar.total = max_steps
        bar.refresh()

    def run_eval(final: bool = False) -> dict:
        t_eval = time.time()
        ds = val_ds if final else val_subset
        model.eval()
        res = evaluate(unwrapped, ds, accelerator=accelerator, batch_size=cfg.eval.batch_size,
                       progress=progress and is_main, desc="final val" if final else "val")
        model.train()
        if is_main:
            rec = {"step": st.step, "epoch": st.epoch, "final": final, "elapsed_s": round(st.elapsed, 1),
                   **{k: v for k, v in res.items()}}
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            accelerator.log({f"val/{k}": v for k, v in res.items() if isinstance(v, (int, float))},
                            step=st.step)
            if res["mIoU"] > st.best_metric:
                st.best_metric, st.best_step = res["mIoU"], st.step
                unwrapped.save_pretrained(out / "best", tokenizer=tokenizer)
        accelerator.wait_for_everyone()
        if not final:
            eval_times.append(time.time() - t_eval)
        return res

    # ---- loop ------------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=None if max_steps == UNPLANNED else max_steps, initial=st.step, disable=not (progress and is_main), desc="train",
               dynamic_ncols=True, smoothing=0.05)
    ema_loss, images_seen = None, 0
    tick = window_start = time.time()
    stop_early = False
    bad_streak = 0
    while st.step < max_steps and not stop_early:
        sampler = EpochBatchSampler(len(train_ds), tc.batch_size, tc.seed, st.epoch, rank, world,
                                    skip=st.batches_in_epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(st.epoch)
        loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            collate_fn=collate, pin_memory=torch.cuda.is_available(),
                            worker_init_fn=_seed_worker,
                            generator=torch.Generator().manual_seed(tc.seed * 7 + st.epoch))
        for batch in loader:
            st.batches_in_epoch += 1
            with accelerator.accumulate(model):
                pixel_values = batch["pixel_values"].to(accelerator.device, non_blocking=True)
                input_ids = batch["input_ids"].to(accelerator.device)
                attention_mask = batch["attention_mask"].to(accelerator.device)
                labels = batch["labels"].to(accelerator.device)
                logits, aux = model(pixel_values, input_ids, attention_mask, return_aux=True)
                loss = criterion(logits, labels, aux.get("deep", ()), aux.get("semantic"),
                                 batch["semantic_labels"].to(accelerator.device) if semantic else None)
                finite = torch.isfinite(loss.detach())
                if world > 1:  # every process must agree to skip, or DDP hangs
                    finite = accelerator.gather(finite.float().reshape(1)).min() > 0
                if not bool(finite):
                    optimizer.zero_grad(set_to_none=True)
                    st.skipped_steps += 1
                    bad_streak += 1
                    if is_main:
                        bar.write(f"step {st.step}: non-finite loss, step skipped "
                                  f"({bad_streak} in a row, {st.skipped_steps} in all)")
                    if bad_streak >= tc.max_bad_steps:
                        raise RuntimeError(f"training stopped: {bad_streak} steps in a row with a non-finite "
                                           f"loss (lower train.lr or check the data)")
                    continue
                bad_streak = 0
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            images_seen += pixel_values.shape[0] * world
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            st.step += 1
            lv = float(loss.detach())
            ema_loss = lv if ema_loss is None else 0.95 * ema_loss + 0.05 * lv
            now = time.time()
            st.elapsed += now - tick
            if st.step % tc.log_every == 0 or st.step == max_steps:
                ips = images_seen / max(1e-9, now - window_start)
                images_seen, window_start = 0, now
                bar.set_postfix(loss=f"{ema_loss:.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}",
                                img_s=f"{ips:.1f}")
                accelerator.log({"train/loss": lv, "train/lr": scheduler.get_last_lr()[0],
                                 "train/images_per_s": ips}, step=st.step)
            tick = now
            bar.update(1)
            if budget is not None:
                if not fit_anchor and st.step >= 10:
                    fit_anchor.append((st.step, st.elapsed))  # timing starts once the loader is warm
                if fit_anchor and st.step == max(tc.warmup_steps, fit_anchor[0][0] + 20):
                    plan_steps()
            if st.step % tc.eval_every == 0 and st.step < max_steps:
                res = run_eval()
                tick = window_start = time.time()  # evaluation time is not training time
                if is_main:
                    bar.write(f"step {st.step}: val mIoU {res['mIoU']:.2f}  oIoU {res['oIoU']:.2f}")
                if budget is not None and st.planned_steps:
                    plan_steps()  # refit with the evaluation's measured cost
            if st.step % tc.checkpoint_every == 0 or st.step == max_steps:
                if st.batches_in_epoch >= sampler.global_batches():
                    st.epoch, st.batches_in_epoch = st.epoch + 1, 0
                save_state()
            if st.step >= max_steps:
                break
            if tc.stop_at_step is not None and st.step == tc.stop_at_step:
                stop_early = True
                break
        else:
            if st.batches_in_epoch >= sampler.global_batches():
                st.epoch, st.batches_in_epoch = st.epoch + 1, 0
    bar.close()
    time_train = st.elapsed
    if st.step < max_steps:  # stopped early on purpose (train.stop_at_step): state is on disk
        if st.step % tc.checkpoint_every:
            save_state()
        accelerator.end_training()
        if is_main:
            print(f"stopped at step {st.step}/{max_steps} (train.stop_at_step); continue with: "
                  f"accelerate launch train.py --resume --output-dir {out}")
        return {"run": str(out), "steps": st.step, "stopped_early": True, "val": None}

    # ---- final evaluation and checkpoints -----------------------------------------------------
    t0 = time.time()
    res = run_eval(final=True)
    if is_main:
        unwrapped.save_pretrained(out / "last", tokenizer=tokenizer)
        if not (out / "best").exists():
            unwrapped.save_pretrained(out / "best", tokenizer=tokenizer)
    time_eval = time.time() - t0
    accelerator.end_training()
    summary = {
        "run": str(out), "steps": st.step, "val": res, "best_mIoU": st.best_metric,
        "best_step": st.best_step, "skipped_steps": st.skipped_steps,
        "time_data_s": round(time_data, 1), "time_train_s": round(time_train, 1),
        "time_eval_s": round(time_eval, 1), "time_total_s": round(time.time() - t_start, 1),
    }
    if is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _fit_semantic_classes(cfg: Config, source) -> None:
    """Size the auxiliary category head to the data (background + its categories), or check it."""
    k = len(source.category_ids) + 1
    if cfg.model.decoder.semantic_classes == 0:
        cfg.model.decoder.semantic_classes = k
    elif cfg.model.decoder.semantic_classes != k:
        raise UserError(f"model.decoder.semantic_classes={cfg.model.decoder.semantic_classes}, but "
                        f"{source.name} has {k - 1} categories (+ background = {k})")


def _drop_records_after(path: Path, step: int) -> None:
    """Forget evaluations logged after the checkpoint we resume from: they are about to be redone."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            pass
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)


def _local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def cpu_threads(setting: int | None, local_processes: int = 1) -> int:
    """Threads for one process: ``setting``, or the machine's cores shared among its processes."""
    if setting:
        return int(setting)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random
    random.seed(seed)
