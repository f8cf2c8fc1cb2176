"""Training with accelerate (CPU, one GPU or many): AdamW + poly LR, periodic evaluation, resumable state.

    trainer = Trainer(cfg, output_dir="runs/x")
    summary = trainer.train()          # setup(), then train_step() per batch, evaluate(), save_state()

Run directory (``runs/<name>/``)::

    config.yaml        the full run config
    state/             resumable state: model/optimizer/RNG (accelerate) + trainer_state.json
    best/  last/       checkpoint directories (``RefSegModel.save_pretrained``: weights, config,
                       processor and model card)
    metrics.jsonl      one JSON object per evaluation
    summary.json       the final evaluation and timings
    logs/              TensorBoard events

Every directory is written to a temporary name first and renamed, so an interrupted save never
leaves a checkpoint that ``--resume`` would trust, and a failed one (disk full) stops the run with the
previous state and checkpoints intact. Which directory a run uses, and that it never overwrites
another run, is decided in ``refseg.engine.rundir``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import RunConfig
from ..data.dataset import worker_init
from ..errors import SaveError, UserError, first_line
from ..models.text import TextFeatureTable
from ..utils import atomic_directory, atomic_write_text, cpu_bf16_flags, cpu_cores, read_directory
from .rundir import TRAINER_STATE, RunDirectory, has_state, latest_run, on_main_process, resolve_run_dir  # noqa: F401
from .badsamples import BAD_SAMPLES, SkipBadSamples, default_limit, read_records
from .progress import EpochBatchSampler, TrainerState, drop_records_after
from .schedule import UNPLANNED, TimeBudget, parameter_groups, poly_warmup_lambda


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def resolve_mixed_precision(setting: str, use_cpu: bool, bf16_flags: Optional[list[str]] = None) -> str:
    """``auto``: bf16 where the hardware runs it fast (recent CPUs, Ampere+ GPUs), else fp32.

    ``bf16_flags``: the CPU's native-bf16 flags (default: ``refseg.utils.cpu_bf16_flags()``).
    """
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and not use_cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast is only a win with native bf16/AMX instructions; emulated it is slower
    # (benchmarks/precision.py measures both on this CPU).
    return "bf16" if (cpu_bf16_flags() if bf16_flags is None else bf16_flags) else "no"


def launch_command(argv: Optional[list[str]] = None) -> str:
    """The command line this process was started with, as the user typed it (as far as it shows):
    ``accelerate launch train.py ...``, ``torchrun ... train.py ...`` or ``python train.py ...``."""
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    script = shlex.join([Path(argv[0]).name if argv and argv[0].endswith(".py") else (argv[0] if argv else "train.py"),
                         *argv[1:]])
    if os.environ.get("ACCELERATE_MIXED_PRECISION") is not None:
        return f"accelerate launch {script}"
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', '?')} {script}"
    return f"python {script}"


def cpu_threads(setting: int | None, local_processes: int = 1) -> int:
    """Threads for one process: ``setting``, or the machine's cores shared among its processes."""
    return int(setting) if setting else max(1, cpu_cores() // max(1, local_processes))


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


class Trainer:
    """Trains ``config`` into a run directory.

    Args:
        config: the run config (with ``resume``, the run's own saved config).
        output_dir: the run directory (default: a new ``runs/<timestamp>``; with ``resume`` alone, the
            newest resumable run). One that holds a run needs ``resume`` or ``overwrite``
            (``RunDirectoryError`` otherwise, before anything is written).
        resume: continue from ``<output_dir>/state``.
        overwrite: start over in an ``output_dir`` that holds a run, moving that run to ``<dir>.old-<n>``.
        progress: tqdm bars on the main process.
        cpu: train on the CPU even if a GPU is present.

    ``setup()`` claims the run directory and builds everything (called by ``train()``;
    ``setup(data=False)`` gives a model and optimiser only, for benchmarks, and no run directory);
    ``train_step(batch)`` is one forward/backward/optimiser step; ``evaluate()``,
    ``save_state()``/``load_state()`` and ``save_checkpoint()`` do what they say (a failed save raises
    ``SaveError`` on every process).
    """

    def __init__(self, config: RunConfig, output_dir: str | Path | None = None, resume: bool = False,
                 progress: bool = True, cpu: bool | None = None, overwrite: bool = False):
        # A relative data.root is the launch directory's: recorded absolute in the run's config and its
        # checkpoints, so evaluate.py / app.py / demo.py find (or regenerate) the same data from any folder.
        config.data.root = os.path.abspath(os.path.expanduser(str(config.data.root)))
        self.config = config
        self.output_dir = output_dir
        self.resume = resume
        self.overwrite = overwrite
        self.progress = progress
        self.cpu = bool(cpu)
        self.state = TrainerState()
        self.budget: Optional[TimeBudget] = None
        self._bad_streak = 0
        self._t_start = time.time()
        self.out: Optional[Path] = None
        self.run_dir: Optional[RunDirectory] = None  # the main process's claim (holds the lock)
        self._saved_step: Optional[int] = None  # step of the last complete state/ on disk
        self.bad_files: dict[str, dict] = {}  # unreadable training files: path -> first record (all processes)
        self.command = launch_command()  # for the model cards

    # -- setup ----------------------------------------------------------------------------------
    def setup(self, data: bool = True) -> "Trainer":
        """Accelerator, run directory, data (``data=True``), model, loss, optimiser and schedule."""
        from accelerate import PartialState

        # The run directory is claimed first, on the main process, and every process gets the same one
        # (a timestamped name could differ by a second); accelerate's TensorBoard tracker needs it
        # before the Accelerator exists.
        from .elastic import restart_store_kwargs

        pstate = PartialState(cpu=self.cpu, **restart_store_kwargs())  # a restart: this attempt's own store keys
        if data:
            out, self.resume = on_main_process(self._claim_run_dir, pstate)
            self.out = Path(out)
        try:
            self._setup(data)
        except BaseException:
            if self.run_dir is not None:  # nothing was written yet: leave no empty run behind
                self.run_dir.release(remove=True)
            raise
        return self

    def _claim_run_dir(self) -> tuple[str, bool]:
        """(run directory, resume): the main process's decision, for every process."""
        from .elastic import restart_count, restarted_run

        resume, overwrite, output_dir = self.resume, self.overwrite, self.output_dir
        if not (resume or overwrite) and self.config.train.resume == "auto":
            own = restarted_run(output_dir)  # an elastic restart finds the run its own job wrote
            if own is not None:
                output_dir = own
                if has_state(own):
                    resume = True
                    print(f"train.resume=auto: elastic restart {restart_count()} continues {own} from its last state")
                else:  # killed before its first state: start over, the partial attempt kept aside
                    overwrite = True
        self.run_dir = RunDirectory.claim(output_dir, resume=resume, overwrite=overwrite)
        if self.run_dir.moved_to is not None:
            print(f"{'--overwrite' if self.overwrite else 'train.resume=auto'}: moved the previous run in "
                  f"{self.run_dir.path} to {self.run_dir.moved_to}")
        return str(self.run_dir.path), resume

    def _setup(self, data: bool) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        tc = self.config.train
        use_cpu = self.cpu or not torch.cuda.is_available()
        project = ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")) \
            if self.out is not None else ProjectConfiguration()
        self.accelerator = acc = Accelerator(
            mixed_precision=resolve_mixed_precision(tc.mixed_precision, use_cpu),
            gradient_accumulation_steps=tc.gradient_accumulation_steps, cpu=self.cpu,
            log_with="tensorboard" if data else None, project_config=project)
        self.is_main = acc.is_main_process
        self.world, self.rank = acc.num_processes, acc.process_index
        set_seed(tc.seed, device_specific=False)
        if acc.device.type == "cpu":
            torch.set_num_threads(cpu_threads(tc.cpu_threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        self.max_steps = tc.max_steps or 0
        if data and self.is_main and self.progress:  # which precision `auto` chose on this machine
            threads = f", {torch.get_num_threads()} threads" if acc.device.type == "cpu" else ""
            print(f"training on {acc.device}{threads} x {self.world} process(es), mixed precision "
                  f"{acc.mixed_precision} (train.mixed_precision={tc.mixed_precision})")
        self.processor = self._processor()
        if data:
            self._setup_data()
        self._setup_model()
        if self.resume:
            self.load_state()
        if data:  # after load_state: a resumed run's text encoder gets its weights there
            self._precompute_text_features()

    def _setup_data(self) -> None:
        from ..data import RefSegDataset, open_source

        cfg, tc, acc = self.config, self.config.train, self.accelerator
        t0 = time.time()
        if cfg.data.name == "refshapes":
            from ..data.refshapes import ensure_refshapes
            with acc.main_process_first():
                ensure_refshapes(cfg.data, progress=self.progress and self.is_main)
        elif cfg.data.name == "grefshapes":  # the generalized variant (gRefCOCO layout), same sizes and seed
            from ..data.grefshapes import ensure_grefshapes
            with acc.main_process_first():
                ensure_grefshapes(cfg.data, progress=self.progress and self.is_main)
        source = open_source(cfg.data)
        self.time_data = time.time() - t0
        self.train_dataset = RefSegDataset(source, cfg.data.train_split, self.processor, train=True,
                                           augment=cfg.data.augment, seed=tc.seed)
        self.val_dataset = RefSegDataset(source, cfg.data.val_split, self.processor, train=False)
        # unreadable training files are replaced, listed in bad_samples.jsonl and counted (badsamples.py)
        self.train_items = SkipBadSamples(self.train_dataset, tc.seed)
        self.bad_limit = cfg.data.max_bad_samples
        if self.bad_limit is None:
            self.bad_limit = default_limit(len(self.train_dataset))
        self.val_subset = self.val_dataset
        if cfg.data.max_val_samples and len(self.val_dataset) > cfg.data.max_val_samples:
            idx = np.random.default_rng(0).choice(len(self.val_dataset), cfg.data.max_val_samples, replace=False)
            self.val_subset = torch.utils.data.Subset(self.val_dataset, sorted(idx.tolist()))
        per_epoch = len(self.train_dataset) // (tc.batch_size * self.world)
        if per_epoch < 1:
            raise UserError(f"the training split has {len(self.train_dataset)} refs: fewer than one global batch "
                            f"({tc.batch_size} x {self.world} processes)")
        steps_per_epoch = max(1, per_epoch // tc.gradient_accumulation_steps)
        if tc.max_epochs:
            self.max_steps = tc.max_epochs * steps_per_epoch
        elif tc.max_steps is None:  # fitted to train.max_minutes as the run measures its own speed
            self.budget = TimeBudget(tc.max_minutes * 60.0, self._t_start, tc, self.world)

    def _processor(self):
        """The run's RefSegProcessor: the config's, with a fine-tuned checkpoint's own tokenizer (its
        text.name may be a Hub name not at hand)."""
        from ..processing import RefSegProcessor

        cfg, tc = self.config, self.config.train
        if tc.init_from:
            tokenizer = read_directory(Path(tc.init_from).expanduser(),
                                       lambda d: RefSegProcessor.from_pretrained(d, cfg.model).tokenizer)
            return RefSegProcessor.from_config(cfg.model, tokenizer)
        return RefSegProcessor.from_config(cfg.model)

    def _setup_model(self) -> None:
        from accelerate.utils import DistributedType

        from ..models import RefSegModel, build_model

        cfg, tc, acc = self.config, self.config.train, self.accelerator
        if tc.init_from and not self.resume:  # fine-tuning: a checkpoint's weights (resume loads its own)
            model = RefSegModel.from_weights(tc.init_from, cfg.model)
        else:
            model = build_model(cfg.model, load_pretrained=not self.resume)
        if tc.sync_batchnorm and self.world > 1 and acc.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # fused: one kernel per step instead of a Python loop over ~500 tensors (6x faster on CPU).
        # FSDP (accelerate's plugin, configs/accelerate/fsdp.yaml): accelerate wants the optimizer made on
        # the unsharded model and prepared with it in one call (FSDP2 swaps its parameters for the DTensor
        # shards); the fused AdamW takes those DTensors (gloo/CPU and CUDA, tests/test_fsdp.py).
        groups = parameter_groups(model, tc.lr, tc.weight_decay, tc.text_lr, rule=tc.weight_decay_rule)
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, poly_warmup_lambda(lambda: self.planned_steps, tc.warmup_steps, tc.poly_power))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self._fsdp = acc.distributed_type == DistributedType.FSDP
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not self._fsdp and self.is_main:
            # accelerate enables FSDP only on GPU-like devices; on CPUs it keeps DDP without a word
            print(f"note: FSDP was asked for, but accelerate runs FSDP on GPUs only: these "
                  f"{acc.device.type} processes train with {acc.distributed_type.value} (full copies)")
        self.unwrapped = acc.unwrap_model(self.model)
        self.processor.pad_multiple = self.unwrapped.pad_multiple

    def _precompute_text_features(self) -> None:
        """A frozen text encoder: every training expression's features computed once, in a fixed order,
        under the steps' autocast (``TextFeatureTable``; ``train.text_feature_cache_mb``)."""
        text, limit = self.unwrapped.text_encoder, self.config.train.text_feature_cache_mb * 2**20
        text.features = TextFeatureTable(limit)
        # not under FSDP: the encoder's layers are sharded and gathered by collectives that every
        # process must enter in every step, whatever its batch's expressions
        if not (text.frozen and limit) or self._fsdp:
            return
        t0 = time.time()
        sentences = list(dict.fromkeys(s.sentence for s in self.train_dataset.samples))
        ids, mask = self.processor.encode_text(sentences)
        device = self.accelerator.device
        with self.accelerator.autocast():
            added = text.precompute(ids.to(device), mask.to(device), progress=self.progress and self.is_main)
        self.time_text_features = time.time() - t0
        if self.is_main and self.progress:
            print(f"text features of {added}/{len(sentences)} training expressions computed once "
                  f"({text.features.bytes / 2**20:.0f} MiB, {self.time_text_features:.1f} s)")

    @property
    def planned_steps(self) -> int:
        """The schedule's length: fixed, or the time budget's current plan."""
        if self.budget is not None:
            return self.budget.planned_steps or UNPLANNED
        return self.max_steps

    # -- one step -------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> Optional[float]:
        """Forward, backward and (at the end of an accumulation window) one optimiser step.

        Returns the loss, or None when it was not finite (the step is skipped on every process;
        ``train.max_bad_steps`` in a row stop training).
        """
        acc, tc, st = self.accelerator, self.config.train, self.state
        with acc.accumulate(self.model):
            x = self.processor.to_device(batch, acc.device)  # uint8 pixels normalised on the device
            loss = self.model(**x).loss
            finite = torch.isfinite(loss.detach())
            if self.world > 1:  # every process must agree to skip, or DDP hangs
                finite = acc.gather(finite.float().reshape(1)).min() > 0
            if not bool(finite):
                self.optimizer.zero_grad(set_to_none=True)
                st.skipped_steps += 1
                self._bad_streak += 1
                if self._bad_streak >= tc.max_bad_steps:
                    raise RuntimeError(f"training stopped: {self._bad_streak} steps in a row with a non-finite "
                                       f"loss (lower train.lr or check the data)")
                return None
            self._bad_streak = 0
            acc.backward(loss)
            if acc.sync_gradients and tc.grad_clip:
                acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients and self._fsdp and self.world > 1:
                self._broadcast_buffers()
        return float(loss.detach())

    def _broadcast_buffers(self) -> None:
        """FSDP: every process takes the main process's buffers (BatchNorm running statistics).

        FSDP shards parameters only; each process's buffers follow its own batches, where DDP copies the
        main process's before every forward. Without this the processes drift apart, the saved
        weights are the main process's but state/ (torch.distributed.checkpoint writes a replicated
        tensor once, from any process) may hold another's, and a resumed run differed from the
        uninterrupted one by 0.04 in the running means (tests/test_fsdp.py). Copying after each
        optimizer step keeps the main process's buffers exactly as under DDP."""
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        buffers = [b for b in self.model.buffers() if b.numel()]
        for dtype in sorted({b.dtype for b in buffers}, key=str):  # one broadcast per dtype, same order everywhere
            group = [b for b in buffers if b.dtype == dtype]
            flat = _flatten_dense_tensors(group)
            torch.distributed.broadcast(flat, src=0)
            for b, v in zip(group, _unflatten_dense_tensors(flat, group)):
                b.copy_(v)

    # -- evaluation and saving ------------------------------------------------------------------
    def evaluate(self, final: bool = False) -> dict:
        """Score the val subset (``final``: the whole val split); log it, keep ``best/`` by ``train.best_metric``."""
        from .evaluate import evaluate

        acc, st = self.accelerator, self.state
        res = evaluate(self.unwrapped, self.val_dataset if final else self.val_subset, self.processor, accelerator=acc,
                       batch_size=self.config.eval.batch_size, progress=self.progress and self.is_main,
                       desc="final val" if final else "val", mixed_precision=self.config.eval.mixed_precision)
        self.model.train()
        if self.is_main:
            acc.log({f"val/{k}": v for k, v in res.items() if isinstance(v, (int, float))}, step=st.step)
        metric = self.config.train.best_metric
        if res[metric] > st.best_metric:  # every process gets the same numbers, so all agree to save
            st.best_metric, st.best_step = res[metric], st.step
        rec = {"step": st.step, "epoch": st.epoch, "final": final, "elapsed_s": round(st.elapsed, 1), **res}
        self._save_or_stop("metrics.jsonl", lambda: self._append_record(rec))
        if st.best_step == st.step:
            note = (f"Final evaluation on the whole `{self.config.data.val_split}` split at step {st.step}" if final
                    else f"Evaluation that chose this checkpoint: {res.get('num_samples', '?')} expressions of "
                         f"`{self.config.data.val_split}` at step {st.step}")
            weights = self._full_state_dict()
            self._save_or_stop("best", lambda: self.save_checkpoint("best", res, note, weights))
        return res

    def _append_record(self, rec: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def save_checkpoint(self, name: str, scores: Optional[dict] = None, scores_note: str = "",
                        weights: Optional[dict] = None) -> Path:
        """``<run>/<name>/``: a self-contained checkpoint directory with its model card (main process only).

        ``weights``: the full state dict from ``_full_state_dict()`` (needed under FSDP, where this
        process holds only its shards)."""
        from ..modelcard import model_card

        card = model_card(self.config, scores, scores_note, command=self.command)
        return self.unwrapped.save_pretrained(self.out / name, run_config=self.config, processor=self.processor,
                                              model_card=card, state_dict=weights)

    def _full_state_dict(self) -> Optional[dict]:
        """Under FSDP: the whole model's weights gathered on the main process (CPU tensors; every process
        must call this, it is a collective); otherwise None (the model saves its own state dict)."""
        if not getattr(self, "_fsdp", False):
            return None
        return self.accelerator.get_state_dict(self.model)

    def save_state(self) -> None:
        """Write ``state/`` atomically (every process its own RNG file, then one swap by the main process).

        A failed write (disk full, I/O error) on any process raises ``SaveError`` on every process and
        leaves the previous ``state/`` as it was.
        """
        acc = self.accelerator
        staging = self.out / "state.staging"
        if self.is_main and staging.exists():
            shutil.rmtree(staging)
        acc.wait_for_everyone()

        def publish() -> None:
            self.state.save(staging / TRAINER_STATE, self.scheduler)
            with atomic_directory(self.out / "state") as tmp:
                for f in staging.iterdir():
                    os.replace(f, tmp / f.name)
            shutil.rmtree(staging, ignore_errors=True)

        try:
            self._save_or_stop("state", lambda: acc.save_state(str(staging), safe_serialization=True),
                               every_process=True)
            self._save_or_stop("state", publish)
        except SaveError:
            if self.is_main:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        self._saved_step = self.state.step

    def _save_or_stop(self, what: str, write, every_process: bool = False) -> None:
        """Run ``write()`` (on the main process, or on ``every_process``); if it failed on any process,
        raise one ``SaveError`` on all of them (its message says what failed and how to go on).
        Also a barrier: every process waits here for the write to finish."""
        error = None
        if every_process or self.is_main:
            try:
                write()
            except Exception as e:  # noqa: BLE001 - safetensors, torch and the OS each have their own errors
                error = f"{type(e).__name__}: {first_line(e)}"
        errors = [error]
        if self.world > 1:
            from accelerate.utils import gather_object

            errors = gather_object(errors)
        failed = next((e for e in errors if e), None)
        if failed is not None:
            exc = SaveError(self._save_failure(what, failed))
            exc.agreed = True  # every process raises it: printed once
            raise exc

    def _save_failure(self, what: str, error: str) -> str:
        """The one line a failed save ends the run with."""
        head = f"could not write {self.out / what} at step {self.state.step} ({error})"
        if self._saved_step is None:
            return (f"{head}; no resumable state was saved yet: free some space, then start again with "
                    f"--overwrite --output-dir {self.out}")
        return (f"{head}; everything saved before is intact (state/ of step {self._saved_step}): "
                f"free some space, then continue with: {self.resume_command}")

    @property
    def resume_command(self) -> str:
        return f"accelerate launch -q train.py --resume --output-dir {self.out}"

    def load_state(self) -> None:
        """Restore model, optimiser, RNG, schedule and counters from ``state/``."""
        state_dir = self.out / "state"
        self.accelerator.load_state(str(state_dir))
        self.state = TrainerState.load(state_dir / TRAINER_STATE, self.scheduler)
        self._saved_step = self.state.step
        if self.budget is not None and self.state.planned_steps:
            self.max_steps, self.budget = self.state.planned_steps, None  # keep the resumed run's schedule
        # files that failed before the resumed state (later ones fail again, and are listed again)
        kept = read_records(self.out / BAD_SAMPLES, self.state.step)
        self.bad_files = {rec["path"]: rec for rec in kept}
        self.accelerator.wait_for_everyone()  # every process has read the list before it is rewritten
        if self.is_main:
            print(f"resuming {self.out} at step {self.state.step}/{self.planned_steps}")
            drop_records_after(self.out / "metrics.jsonl", self.state.step)
            if (self.out / BAD_SAMPLES).exists():
                atomic_write_text(self.out / BAD_SAMPLES, "".join(json.dumps(r) + "\n" for r in kept))

    # -- the loop -------------------------------------------------------------------------------
    def _loader(self, sampler: EpochBatchSampler) -> DataLoader:
        """One loader for the whole run: workers persist across epochs (``sampler.set_epoch``)."""
        from ..data.dataset import collate

        tc, workers = self.config.train, self.config.data.num_workers
        return DataLoader(self.train_items, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                          pin_memory=self.accelerator.device.type == "cuda", worker_init_fn=worker_init,
                          persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(tc.seed * 7 + self.state.epoch))

    def _replan(self, bar, final_eval_ratio: float) -> None:
        """Refit the schedule to the time budget (all processes get the same number)."""
        from accelerate.utils import broadcast_object_list

        st = self.state
        before = self.budget.planned_steps
        planned = [self.budget.plan(st.step, st.elapsed, len(self.val_subset), final_eval_ratio)]
        if self.world > 1:
            broadcast_object_list(planned, from_process=0)
        self.budget.planned_steps = st.planned_steps = planned[0]
        if planned[0] != before and self.is_main:
            bar.write(f"step {st.step}: {self.budget.step_seconds(st.step, st.elapsed):.2f} s/step, {planned[0]} "
                      f"steps fit train.max_minutes={self.config.train.max_minutes:g}"
                      + ("" if before is None else f" (was {before})"))
        bar.total = planned[0]
        bar.refresh()

    def train(self) -> dict:
        """Set up (if not yet), train to the planned step count, evaluate, save; returns a summary dict."""
        if not hasattr(self, "accelerator"):
            self.setup()
        try:
            return self._train()
        finally:
            if self.run_dir is not None:
                self.run_dir.release()

    def _train(self) -> dict:
        from .elastic import write_launch_record

        cfg, tc, acc, st = self.config, self.config.train, self.accelerator, self.state
        self._save_or_stop("launch.json", lambda: write_launch_record(self.out))  # before any run entry
        self._save_or_stop("config.yaml", lambda: cfg.save(self.out / "config.yaml"))
        if self.is_main:
            acc.init_trackers("tb", config={"lr": tc.lr, "batch_size": tc.batch_size})
        final_ratio = len(self.val_dataset) / max(1, len(self.val_subset))
        self.model.train()
        unplanned = self.planned_steps == UNPLANNED
        bar = tqdm(total=None if unplanned else self.planned_steps, initial=st.step, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.is_main), smoothing=0.05)
        ema_loss, images_seen = None, 0
        tick = window_start = time.time()
        stopped_early = False
        sampler = EpochBatchSampler(len(self.train_dataset), tc.batch_size, tc.seed, st.epoch, self.rank,
                                    self.world, skip=st.batches_in_epoch)
        loader = self._loader(sampler)
        while not self._done() and not stopped_early:
            sampler.set_epoch(st.epoch, skip=st.batches_in_epoch)
            for batch in loader:
                self._note_bad_samples(batch.pop("bad_samples", []))
                st.batches_in_epoch += 1
                lv = self.train_step(batch)
                if lv is None:
                    if self.is_main:
                        bar.write(f"step {st.step}: non-finite loss, step skipped "
                                  f"({self._bad_streak} in a row, {st.skipped_steps} in all)")
                    continue
                images_seen += batch["pixel_values"].shape[0] * self.world
                if not acc.sync_gradients:
                    continue
                self.scheduler.step()
                st.step += 1
                ema_loss = lv if ema_loss is None else 0.95 * ema_loss + 0.05 * lv
                now = time.time()
                st.elapsed += now - tick
                if st.step % tc.log_every == 0 or st.step == self.planned_steps:
                    ips = images_seen / max(1e-9, now - window_start)
                    images_seen, window_start = 0, now
                    lr = self.scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{ema_loss:.3f}", lr=f"{lr:.1e}", img_s=f"{ips:.1f}")
                    acc.log({"train/loss": lv, "train/lr": lr, "train/images_per_s": ips}, step=st.step)
                tick = now
                bar.update(1)
                if self.budget is not None and self.budget.ready_to_plan(st.step, st.elapsed, tc.warmup_steps):
                    self._replan(bar, final_ratio)
                if st.step % tc.eval_every == 0 and not self._done():
                    t_eval = time.time()
                    res = self.evaluate()
                    if self.budget is not None:
                        self.budget.eval_seconds.append(time.time() - t_eval)
                    tick = window_start = time.time()  # evaluation time is not training time
                    if self.is_main:
                        bar.write(f"step {st.step}: val mIoU {res['mIoU']:.2f}  oIoU {res['oIoU']:.2f}")
                    if self.budget is not None and self.budget.planned_steps is not None:
                        self._replan(bar, final_ratio)  # refit with the evaluation's measured cost
                if st.step % tc.checkpoint_every == 0 or self._done():
                    st.end_epoch_if_done(sampler.global_batches())
                    self.save_state()
                if self._done():
                    break
                if tc.stop_at_step is not None and st.step == tc.stop_at_step:
                    stopped_early = True
                    break
            else:
                st.end_epoch_if_done(sampler.global_batches())
        bar.close()
        return self._finish(stopped_early)

    def _note_bad_samples(self, per_item: list[list[dict]]) -> None:
        """Gather the batch's replaced samples from every process, list new files in bad_samples.jsonl
        and stop (``DataError`` on every process) past ``data.max_bad_samples`` files."""
        records = [r for rs in per_item for r in rs]
        if self.world > 1:  # one small all-gather per batch; the records themselves only when there are any
            from accelerate.utils import gather_object

            count = self.accelerator.gather(torch.tensor([len(records)], device=self.accelerator.device))
            if int(count.sum()) == 0:
                return
            records = gather_object(records)
        new = []
        for rec in records:
            if rec["path"] not in self.bad_files:
                rec = {**rec, "step": self.state.step + 1}  # the optimiser step whose batch held it
                self.bad_files[rec["path"]] = rec
                new.append(rec)
        if not new:
            return
        if self.is_main:
            for rec in new:
                print(f"step {rec['step']}: skipped an unreadable training sample ({rec['reason']}); "
                      f"{len(self.bad_files)} so far, listed in {self.out / BAD_SAMPLES}")

        def append() -> None:
            with open(self.out / BAD_SAMPLES, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in new))

        self._save_or_stop(BAD_SAMPLES, append)
        if len(self.bad_files) > self.bad_limit:
            from ..errors import DataError

            exc = DataError(f"{len(self.bad_files)} training files could not be read (more than "
                            f"data.max_bad_samples={self.bad_limit}); they are listed in {self.out / BAD_SAMPLES}: "
                            f"fix or remove them, or raise data.max_bad_samples, then continue with: "
                            f"{self.resume_command}")
            exc.agreed = True  # every process raises it: printed once
            raise exc

    def _done(self) -> bool:
        planned = self.planned_steps
        return bool(planned) and self.state.step >= planned

    def _finish(self, stopped_early: bool) -> dict:
        acc, st, tc = self.accelerator, self.state, self.config.train
        time_train = st.elapsed
        if stopped_early:  # train.stop_at_step: state is on disk
            if st.step % tc.checkpoint_every:
                self.save_state()
            acc.end_training()
            if self.is_main:
                print(f"stopped at step {st.step}/{self.planned_steps} (train.stop_at_step); continue with: "
                      f"{self.resume_command}")
            return {"run": str(self.out), "steps": st.step, "stopped_early": True, "val": None}
        t0 = time.time()
        res = self.evaluate(final=True)
        final_note = f"Final evaluation on the whole `{self.config.data.val_split}` split at step {st.step}"
        weights = self._full_state_dict()
        self._save_or_stop("last", lambda: self.save_checkpoint("last", res, final_note, weights))
        # (main process; a resumed run whose best/ went missing gets the final weights)
        self._save_or_stop("best", lambda: (self.out / "best").exists()
                           or self.save_checkpoint("best", res, final_note, weights))
        time_eval = time.time() - t0
        summary = {
            "run": str(self.out), "steps": st.step, "val": res, f"best_{tc.best_metric}": st.best_metric,
            "best_step": st.best_step, "skipped_steps": st.skipped_steps,
            "time_data_s": round(getattr(self, "time_data", 0.0), 1),
            "text_features": len(self.unwrapped.text_encoder.features),
            "time_text_features_s": round(getattr(self, "time_text_features", 0.0), 1),
            "time_train_s": round(time_train, 1),
            "time_eval_s": round(time_eval, 1), "time_total_s": round(time.time() - self._t_start, 1),
        }
        self._save_or_stop("summary.json",
                           lambda: atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1)))
        acc.end_training()  # last: it ends the process group the saves above agree through
        return summary


def train(cfg: RunConfig, output_dir: str | Path | None = None, resume: bool = False,
          progress: bool = True, cpu: bool | None = None, overwrite: bool = False) -> dict:
    """Train ``cfg`` and return a summary dict (final val metrics, paths, timings); see ``Trainer``."""
    return Trainer(cfg, output_dir=output_dir, resume=resume, progress=progress, cpu=cpu,
                   overwrite=overwrite).train()
