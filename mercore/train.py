"""Building a run's components from a validated recipe, training, and evaluating.

Reproducibility: the training order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so it never depends on what ran before; the global RNG (dropout, Gumbel noise) is saved in
every checkpoint. A resumed CPU run therefore ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import numpy as np
import torch

from mercore import checkpoint as ckpt
from mercore import distributed as dist
from mercore import metrics_log, run_lock, stop_signals, threads
from mercore.config import config_to_dict
from mercore.data import checks
from mercore.data.types import PAD_LABEL, Corpus, DialogueBatch, iterate_batches
from mercore.errors import CheckpointError, ConfigError, StorageError, TrainingError
from mercore.metrics import classification_report
from mercore.model_api import ModelOutput
from mercore.progress import Progress
from mercore.recipe import _DEVICE, DEVICE_CHOICES, LoadedRecipe, Recipe
from mercore.run_info import write_run_info
from mercore.runs import load_run_weights, resolve_checkpoint
from mercore.yaml_io import dump_yaml

# Keys of the recipe that may differ between the interrupted run and its resumption.
# Keys a resume may change: how to run, not what is trained (max_dialogue_length only guards the data, and runs
# saved before it existed lack it).
RESUME_MAY_DIFFER = {"resume", "trainer.resume_from", "trainer.progress", "trainer.device", "trainer.threads",
                     "trainer.max_dialogue_length"}
# Keys added to the recipe after runs were saved without them: a saved recipe that lacks one had this value.
SAVED_WITHOUT = {"trainer.precision": "fp32"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str, where: str = "trainer.device") -> torch.device:
    """The device ``name`` (cpu, cuda, cuda:N or auto: CUDA when available, else the CPU) names; ``where`` names
    the setting in the error when it is not a device or asks for a CUDA device this machine lacks."""
    if not _DEVICE.match(name):
        raise ConfigError([f"{where}: {name!r} is not a device; valid choices: {', '.join(DEVICE_CHOICES)}"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"{where}: {name!r} requested but CUDA is not available (use cpu or auto)"])
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError([f"{where}: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                           "device(s)"])
    return device


def autocast(device: torch.device, precision: str):
    """The context that runs a forward (and its loss) at ``precision`` on ``device``: nothing at fp32 (so fp32
    stays bit-identical to a run without autocast), ``torch.autocast(bfloat16)`` at bf16 (CUDA and CPU)."""
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ConfigError([f"trainer.precision: {precision!r} is not a precision; valid choices: fp32, bf16"])


def apply_thread_policy(configured: int | None) -> int:
    """Set torch's intra-op threads: ``configured`` (``trainer.threads``), else torch's own choice where the user
    set ``OMP_NUM_THREADS``, else :func:`mercore.threads.default_threads`. Returns the count in use."""
    if configured:
        torch.set_num_threads(configured)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(threads.default_threads())
    return torch.get_num_threads()


@attrs.define
class Components:
    """Everything a recipe builds: the data, the model and the training objective."""

    corpus: Corpus
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    distiller: torch.nn.Module | None
    modalities: list[str]


def label_counts(corpus: Corpus, split: str = "train") -> torch.Tensor:
    counts = torch.zeros(corpus.num_classes, dtype=torch.long)
    for d in corpus.split(split):
        labels = d.labels[d.labels != PAD_LABEL]
        counts += torch.bincount(labels, minlength=corpus.num_classes)
    return counts


def model_context(corpus: Corpus) -> dict[str, Any]:
    """What a model (and a distiller) is built with besides its config: the data's shape and labels."""
    return dict(modality_dims=dict(corpus.modality_dims), num_classes=corpus.num_classes,
                num_speakers=corpus.num_speakers, label_names=list(corpus.label_names))


def model_guides_at_eval(model: torch.nn.Module | Recipe) -> bool:
    """Whether the model (built, or a recipe's) lets the teacher guide it at evaluation too (then evaluation
    needs the distiller and its teacher)."""
    config = model.model.config if isinstance(model, Recipe) else getattr(model, "config", None)
    return bool(getattr(config, "guide_at_eval", False))


def build_components(recipe: Recipe, corpus: Corpus | None = None, *, for_eval: bool = False) -> Components:
    """Load the data and build model, loss and distiller from the recipe's nodes.

    ``for_eval``: build the distiller only when the model needs the teacher at evaluation
    (:func:`model_guides_at_eval`), so evaluating a student needs no teacher run otherwise.
    """
    if corpus is None:
        corpus = recipe.data.build().load()
    checks.check_dialogue_lengths(corpus.splits, recipe.trainer.max_dialogue_length, corpus.source or corpus.name)
    context = model_context(corpus)
    model = recipe.model.build(**context)
    loss_fn = recipe.loss.build(num_classes=corpus.num_classes, train_label_counts=label_counts(corpus))
    want_distiller = recipe.distiller is not None and (not for_eval or model_guides_at_eval(model))
    distiller = recipe.distiller.build(student=model, **context) if want_distiller else None
    return Components(corpus=corpus, model=model, loss_fn=loss_fn, distiller=distiller,
                      modalities=list(corpus.modality_dims))


def forward_batch(c: Components, batch: DialogueBatch, model: torch.nn.Module | None = None
                  ) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
    """One forward pass: the teacher (if any), the student, and every named loss term (already weighted).

    ``model`` replaces ``c.model`` for the call (the DDP-wrapped model during distributed training).
    """
    teacher_out = c.distiller.teacher_output(batch) if c.distiller is not None else None
    out = (model or c.model)(batch, teacher=teacher_out)
    terms = {"task": c.loss_fn(out.logits, batch.labels)}
    terms.update({name: w * c.loss_fn(logits, batch.labels) for name, (w, logits) in out.task_loss_logits.items()})
    terms.update(out.aux_losses)
    if c.distiller is not None:
        terms.update(c.distiller(out, teacher_out, batch))
    return out, terms


@torch.no_grad()
def evaluate(c: Components, split: str, batch_size: int, device: torch.device, precision: str = "fp32"
             ) -> tuple[dict, list[dict]]:
    """Metrics of ``split`` and the per-utterance predictions ``{dialogue, index, gold, pred, gold_label,
    pred_label, probabilities}`` (``probabilities``: label name -> softmax probability), computed on
    ``device`` (where the model is) at ``precision`` (``trainer.precision``)."""
    c.model.eval()
    if c.distiller is not None:
        c.distiller.eval()
    checks.require_labels(c.corpus.split(split), split, c.corpus.source or c.corpus.name)
    golds, preds, rows = [], [], []
    # The teacher's forward is needed at evaluation only by a model that lets it guide there.
    guides_at_eval = model_guides_at_eval(c.model)
    for batch in iterate_batches(c.corpus.split(split), c.modalities, batch_size, pin_memory=device.type == "cuda"):
        batch = batch.to(device)
        with autocast(device, precision):
            teacher_out = c.distiller.teacher_output(batch) if c.distiller is not None and guides_at_eval else None
            logits = c.model(batch, teacher=teacher_out).logits
        # One copy back per batch; the per-utterance rows are then read from host tensors.
        keep = batch.mask & (batch.labels != PAD_LABEL)
        labels, pred_cpu, keep_cpu = (t.cpu() for t in (batch.labels, logits.argmax(-1), keep))
        golds.append(labels[keep_cpu])
        preds.append(pred_cpu[keep_cpu])
        probs = torch.softmax(logits.float(), dim=-1).cpu()  # (B, T, C)
        rows.extend(_prediction_rows(batch.dialogue_ids, keep_cpu, labels, pred_cpu, probs, c.corpus.label_names))
    gold = torch.cat(golds) if golds else torch.zeros(0, dtype=torch.long)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    return classification_report(gold, pred, c.corpus.label_names), rows


def _prediction_rows(dialogue_ids: list[str], keep: torch.Tensor, gold: torch.Tensor, pred: torch.Tensor,
                     probs: torch.Tensor, label_names: list[str]) -> list[dict]:
    """One row per kept utterance (``keep``: ``(B, T)`` bool) of a batch, from host tensors already copied back
    (``gold``, ``pred``: ``(B, T)``; ``probs``: ``(B, T, C)``), with label names and probabilities (rounded to 6
    digits: the file is for people and tools, not for bit-exact comparisons)."""
    gold, pred, probs = gold.tolist(), pred.tolist(), probs.tolist()
    rows = []
    for b, did in enumerate(dialogue_ids):
        for t in torch.nonzero(keep[b]).flatten().tolist():
            rows.append({"dialogue": did, "index": t, "gold": gold[b][t], "pred": pred[b][t],
                         "gold_label": label_names[gold[b][t]], "pred_label": label_names[pred[b][t]],
                         "probabilities": {n: round(p, 6) for n, p in zip(label_names, probs[b][t])}})
    return rows


def _rng_state() -> dict[str, Any]:
    """This process's global random state: torch (and CUDA), Python and NumPy, as tensors and plain values
    (``trainer_state.pt`` is loaded with ``weights_only=True``, which refuses NumPy arrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state:  # checkpoints written before NumPy's state was saved lack it
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _with_todays_defaults(saved: dict) -> dict:
    """A saved recipe.yaml as today's code resolves it: options added since it was written (a new model or
    loss option, the ``logger`` node) take their defaults, so they do not count as a change on resume.
    A recipe that no longer validates is compared as written (the differing keys are then named)."""
    from mercore.config import validate_config
    from mercore.plugins import get_registry

    if not isinstance(saved, dict):
        return saved
    recipe, problems = validate_config(Recipe, copy.deepcopy(saved), get_registry())
    if problems or recipe is None:
        return saved
    data = config_to_dict(recipe)
    data.pop("resume", None)
    data["trainer"].pop("resume_from", None)
    return data


def _check_resume_recipe(saved: dict, current: dict) -> None:
    a, b = _flatten(saved), _flatten(current)
    for key, value in SAVED_WITHOUT.items():
        a.setdefault(key, value)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_MAY_DIFFER)
    if differ:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:8])
        raise ConfigError([f"resume=true but the recipe differs from the interrupted run's recipe.yaml: {shown}. "
                           "Resume with the same recipe and overrides, or start a new output_dir."])


@attrs.define
class LoopState:
    """Where the training loop stands; saved in every checkpoint's trainer state and restored on resume."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps of the current epoch already trained
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epochs_without_improvement: int = 0
    # Sums and counts of ModelOutput.stats over this epoch's training steps, logged as the epoch's means; part of
    # the saved state so that a mid-epoch resume logs the same means as an uninterrupted run.
    stat_sums: dict[str, list[float]] = attrs.Factory(dict)

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch, self.epoch_loss_sum, self.epoch_loss_count = 0, 0.0, 0
        self.stat_sums = {}


class StatSums:
    """This epoch's sums of ``ModelOutput.stats`` kept where the values are (on the device, float64), read
    into :attr:`LoopState.stat_sums` only by :meth:`flush` (at a checkpoint and at the epoch's end), so a
    training step reads nothing back for them. A stat given as a Python float (already read by its component)
    is added as it is.

    Each sum starts from the state's saved value and is added to in step order, in float64, exactly as the
    Python float sums of earlier versions: the logged means, and a mid-epoch resume's, are unchanged.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}

    def add(self, state: LoopState, stats: dict[str, Any]) -> None:
        for key, value in stats.items():
            acc = state.stat_sums.setdefault(key, [0.0, 0])
            acc[1] += 1
            if not isinstance(value, torch.Tensor):
                if key in self._sums:  # a tensor sum is pending: keep the order of the additions
                    self._sums[key] = self._sums[key] + float(value)
                else:
                    acc[0] = acc[0] + float(value)
                continue
            value = value.detach().reshape(())
            if key not in self._sums:
                self._sums[key] = torch.tensor(acc[0], dtype=torch.float64, device=value.device)
            self._sums[key] = self._sums[key] + value.to(torch.float64)

    def flush(self, state: LoopState) -> None:
        """Read the pending device sums (one host read) into ``state.stat_sums``."""
        if not self._sums:
            return
        keys = list(self._sums)
        values = torch.stack([self._sums[k].cpu() for k in keys]).tolist()
        for key, value in zip(keys, values):
            state.stat_sums[key][0] = value
        self._sums = {}


@attrs.define
class TrainingSetup:
    """What set-up builds once per run: the components on their device and the optimization around them."""

    components: Components
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None
    train_model: torch.nn.Module  # the model, or its DDP wrapper under torchrun
    train_set: list
    steps_per_epoch: int
    precision: str = "fp32"  # trainer.precision
    threads: int = 1  # torch intra-op threads in use


class Trainer:
    """Trains one recipe into its run directory; see the module docstring for the reproducibility contract.

    :meth:`run` is set-up (:meth:`_set_up`, :meth:`_resume`), then per epoch :meth:`_train_epoch` and
    :meth:`_end_epoch`, then :meth:`_finish`. Checkpoints are written by :meth:`_save` only; a stop request
    (:attr:`_stop_requested`, set by the handler that :meth:`_stop_requests` installs) is honoured after the
    current step.
    """

    def __init__(self, loaded: LoadedRecipe, *, log: Callable[[str], None] = print):
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.cfg = self.recipe.trainer
        self.run_dir = Path(self.recipe.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.loggers: list = []  # the recipe's loggers (rank 0 only), opened once the run's state is known
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self._log = log
        self._stop_requested = False
        self._stop_signum = int(signal.SIGINT)  # the signal that asked to stop
        self._stat_sums = StatSums()  # this epoch's stats, summed on the device

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    def run(self) -> dict:
        """Train, select on dev, evaluate the selected checkpoint on test, write ``results.json``.

        The run directory is locked for the whole run (a second run on it is refused; see run_lock.py).
        """
        lock = run_lock.RunLock(self.recipe.output_dir, log=self.log) if self.is_main else None  # rank 0 writes
        if lock is not None:
            lock.acquire()
        try:
            return self._run_locked()
        except OSError as exc:  # an OS error on a write that no narrower handler named: still name the path
            raise StorageError(f"OS error during the run in {self.run_dir}: {exc.strerror or exc} "
                               f"({exc.filename or self.run_dir}); the last complete "
                               "checkpoint is intact: fix the cause, then continue with resume=true") from None
        finally:
            try:
                metrics_log.close_loggers(self.loggers)  # also when the run stops by an error or a signal
            finally:
                if lock is not None:
                    lock.release()

    def _run_locked(self) -> dict:
        t_start = time.perf_counter()
        setup = self._set_up()
        state = self._resume(setup) if self.recipe.resume else LoopState()
        if self.is_main:  # a resumed run's loggers forget the epochs it redoes (jsonl: a truncated last line too)
            self.loggers = metrics_log.open_loggers(self.recipe.logger, self.run_dir, state.epoch, log=self.log)
        with self._stop_requests():
            while state.epoch < self.cfg.epochs:
                t_epoch = time.perf_counter()
                self._train_epoch(setup, state)
                if self._end_epoch(setup, state, t_epoch):
                    break
                if dist.any_rank(self._stop_requested) and state.epoch < self.cfg.epochs:  # just saved: stop now
                    self._raise_interrupted(f"the end of epoch {state.epoch}")
            results = self._finish(setup, state, time.perf_counter() - t_start)
        if dist.any_rank(self._stop_requested):
            # Asked to stop during the last epoch's evaluation or the final one: the run is complete and its
            # results are written, but the caller (a sweep, a stage plan, the shell) must still stop.
            self.log("stop request: the run had finished training; its results are written")
            raise stop_signals.RunInterrupted(self._stop_signum)
        return results

    # -- set-up ----------------------------------------------------------------------------------------------
    def _set_up(self) -> TrainingSetup:
        """Threads, device and seeds; the run directory; the components, optimizer and scheduler."""
        n_threads = apply_thread_policy(self.cfg.threads)
        device = resolve_device(self.cfg.device if not dist.is_distributed() else dist.device_for_rank(self.cfg.device))
        seed_everything(self.recipe.seed)
        self._prepare_run_dir()
        c = build_components(self.recipe)
        if self.is_main:  # label names, dims, extractors, versions: the run folder is usable on its own
            write_run_info(self.run_dir, self.recipe, c.corpus, keep_existing=self.recipe.resume)
        c.model.to(device)
        if c.distiller is not None:
            c.distiller.to(device)
        train_set = c.corpus.split("train")
        dev_set, test_set = c.corpus.split("dev"), c.corpus.split("test")  # fail now, not after training
        params = list(c.model.named_parameters())
        if c.distiller is not None:
            params += [(f"distiller.{n}", p) for n, p in c.distiller.named_parameters()]
        optimizer = self.recipe.optimizer.build(params=params)
        steps_per_epoch = math.ceil(len(train_set) / self.cfg.batch_size)
        scheduler = (self.recipe.scheduler.build(optimizer=optimizer, total_steps=steps_per_epoch * self.cfg.epochs)
                     if self.recipe.scheduler is not None else None)
        train_model = dist.wrap_model(c.model, device) if dist.is_distributed() else c.model
        n_params = sum(p.numel() for p in c.model.parameters() if p.requires_grad)
        self.log(f"data: {c.corpus.name} ({c.corpus.source}) modalities {c.modalities} "
                 f"train/dev/test dialogues {len(train_set)}/{len(dev_set)}/{len(test_set)}")
        self.log(f"model: {self.recipe.model.name} with {n_params:,} trainable parameters on {device} "
                 f"({self.cfg.precision}, {n_threads} CPU thread{'s' if n_threads > 1 else ''})"
                 + (f", {self.world} processes" if self.world > 1 else ""))
        return TrainingSetup(components=c, device=device, optimizer=optimizer, scheduler=scheduler,
                             train_model=train_model, train_set=train_set, steps_per_epoch=steps_per_epoch,
                             precision=self.cfg.precision, threads=n_threads)

    def _prepare_run_dir(self) -> None:
        saved_recipe = self.run_dir / "recipe.yaml"
        has_run = self.ckpt_dir.exists() and any(self.ckpt_dir.iterdir())
        if has_run and not self.recipe.resume:
            raise ConfigError([f"output_dir {str(self.run_dir)!r} already holds a run (checkpoints/); "
                               "pass resume=true to continue it, or choose another output_dir"])
        if self.recipe.resume and saved_recipe.exists():
            from mercore.yaml_io import parse_yaml

            saved, _ = parse_yaml(saved_recipe.read_text(), source=str(saved_recipe))
            _check_resume_recipe(_with_todays_defaults(saved), self._recipe_to_save())
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(saved_recipe, dump_yaml(self._recipe_to_save()))

    def _recipe_to_save(self) -> dict:
        """The fully resolved recipe (every default written out), minus the keys of this invocation only."""
        data = config_to_dict(self.recipe)
        data.pop("resume", None)
        data["trainer"].pop("resume_from", None)
        return data

    # -- one epoch -------------------------------------------------------------------------------------------
    def _train_epoch(self, setup: TrainingSetup, state: LoopState) -> None:
        """Train the steps of epoch ``state.epoch`` not trained yet; on a stop request save and interrupt."""
        c, epoch = setup.components, state.epoch
        c.model.train()
        if c.distiller is not None:
            c.distiller.train()
        order = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + epoch)
        # On CUDA the batch is collated into pinned memory and copied once, asynchronously (DialogueBatch.to).
        batches = iterate_batches(setup.train_set, c.modalities, self.cfg.batch_size, generator=order,
                                  pin_memory=setup.device.type == "cuda")
        bar = Progress(batches, setup.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                       enabled=self.cfg.progress and self.is_main)
        for step, batch in enumerate(bar):
            if step < state.step_in_epoch:
                continue  # already trained before the interruption
            batch = dist.shard_batch(batch, self.rank, self.world).to(setup.device)
            loss = self._train_step(setup, batch, step, state)
            state.epoch_loss_sum += loss
            state.epoch_loss_count += 1
            state.step_in_epoch = step + 1
            state.global_step += 1
            bar.postfix = f"loss {loss:.4f}"
            if dist.any_rank(self._stop_requested):  # every rank saves at the same step (the save is collective)
                self._save(setup, state, reason="interrupted")
                self._raise_interrupted(f"epoch {epoch + 1} step {step + 1}")

    def _train_step(self, setup: TrainingSetup, batch: DialogueBatch, step: int, state: LoopState) -> float:
        """One optimizer step on ``batch`` (this rank's share); the global batch's loss.

        The step reads one value back from the device: the logged loss, together with the gradient norm, after
        the backward has been queued (so on CUDA the host waits once per step, while the GPU runs the backward,
        not between forward and backward). A non-finite loss or norm stops the run before the optimizer step,
        so the weights stay those of the last good step. Stats are summed on the device (:class:`StatSums`).
        """
        with autocast(setup.device, setup.precision):
            out, terms = forward_batch(setup.components, batch, model=setup.train_model)
            total = dist.scale_loss(sum(terms.values()), batch)
        self._stat_sums.add(state, out.stats)
        optimizer = setup.optimizer
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        norm = None
        if self.cfg.grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        logged = dist.mean_across_ranks(total.detach())
        # The one host read of the step: [the local loss, the logged (global) loss, the gradient norm].
        read = torch.stack([total.detach().float(), logged.float(), (norm if norm is not None else logged).float()])
        local_loss, loss, norm_value = read.tolist()
        where = f"epoch {state.epoch + 1}, step {step + 1}"
        if not math.isfinite(local_loss):
            shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            last = ckpt.latest_folder(self.ckpt_dir)
            raise TrainingError(
                f"non-finite loss at {where} (global step {state.global_step + 1}), "
                f"dialogues {batch.dialogue_ids[:4]}{'...' if len(batch.dialogue_ids) > 4 else ''}: {shown}. "
                f"The last good checkpoint is kept: {last if last else 'none yet'}. "
                "Lower the learning rate, enable trainer.grad_clip, or check the input features for NaN.")
        if not math.isfinite(norm_value):
            raise TrainingError(f"non-finite gradient norm at {where}; "
                                f"loss terms: {', '.join(f'{k}={float(v.detach()):.4g}' for k, v in terms.items())}")
        optimizer.step()
        if setup.scheduler is not None:
            setup.scheduler.step()
        return loss

    # -- end of epoch ----------------------------------------------------------------------------------------
    def _end_epoch(self, setup: TrainingSetup, state: LoopState, t_epoch: float) -> bool:
        """Evaluate, keep the best checkpoint, log the epoch, save; True when early stopping ends the run."""
        c, epoch = setup.components, state.epoch
        self._stat_sums.flush(state)
        dev, _ = evaluate(c, "dev", self.cfg.eval_batch_size, setup.device, setup.precision)
        test, _ = evaluate(c, "test", self.cfg.eval_batch_size, setup.device, setup.precision)
        score = dev[self.cfg.select_metric]
        improved = score > state.best_score
        train_loss = state.epoch_loss_sum / max(state.epoch_loss_count, 1)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": setup.optimizer.param_groups[0]["lr"],
                  "dev": _summary(dev), "test": _summary(test), "selected": improved,
                  "seconds": round(time.perf_counter() - t_epoch, 3)}
        if state.stat_sums:
            record["stats"] = {k: total / n for k, (total, n) in sorted(state.stat_sums.items())}
        if improved:
            state.best_score, state.best_epoch = score, epoch + 1
            state.epochs_without_improvement = 0
            if self.is_main:
                ckpt.write_checkpoint(self.ckpt_dir / "best", model=c.model, extra=c.distiller,
                                      info={"epoch": epoch + 1, "dev": _summary(dev)})
        else:
            state.epochs_without_improvement += 1
        state.start_next_epoch()
        if self.is_main:
            metrics_log.log_epoch(self.loggers, record)  # written before the epoch's checkpoint
        self._save(setup, state, reason="epoch")
        self.log(f"epoch {epoch + 1:3d}/{self.cfg.epochs}  loss {train_loss:.4f}  "
                 f"dev acc {dev['accuracy']:.4f} wF1 {dev['weighted_f1']:.4f}  "
                 f"test acc {test['accuracy']:.4f} wF1 {test['weighted_f1']:.4f}  "
                 f"{record['seconds']:.1f}s{'  *' if improved else ''}")
        if self.cfg.patience is not None and state.epochs_without_improvement >= self.cfg.patience:
            self.log(f"early stop: no dev {self.cfg.select_metric} improvement for {self.cfg.patience} epochs")
            return True
        return False

    # -- stop requests ---------------------------------------------------------------------------------------
    @contextmanager
    def _stop_requests(self) -> Iterator[None]:
        """While training, SIGINT, SIGTERM and SIGHUP ask for a checkpoint after the current step
        (:meth:`_on_stop_signal`); the previous handlers come back afterwards (see stop_signals.py)."""
        restore = stop_signals.install(self._on_stop_signal)
        try:
            yield
        finally:
            restore()

    def _on_stop_signal(self, signum, frame) -> None:
        """SIGINT, SIGTERM or SIGHUP: finish this step and save (a second signal stops at once, unsaved)."""
        if self._stop_requested:
            raise stop_signals.RunInterrupted(signum, "stopped at once by a second signal, without saving")
        self._stop_requested, self._stop_signum = True, signum
        what = "Ctrl-C" if signum == signal.SIGINT else stop_signals.signal_name(signum)
        self.log(f"\n{what}: finishing this step and saving a checkpoint (signal again to abort without saving)")

    def _raise_interrupted(self, where: str) -> None:
        self.log(f"interrupted: saved a checkpoint at {where}; "
                 f"continue with: mercore run {self.loaded.source} resume=true output_dir={self.run_dir}")
        raise stop_signals.RunInterrupted(self._stop_signum)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save(self, setup: TrainingSetup, state: LoopState, reason: str) -> None:
        """Write ``epoch-NNNN[-step-NNNNNN]`` (rank 0) with every rank's random state; every rank returns
        only once the checkpoint is complete. Called by every rank at the same step."""
        self._stat_sums.flush(state)
        rng_ranks = dist.gather_to_main(_rng_state())  # [rank 0, rank 1, ...] on rank 0, None elsewhere
        if self.is_main:
            trainer_state = {
                "state": attrs.asdict(state),
                "optimizer": setup.optimizer.state_dict(),
                "scheduler": setup.scheduler.state_dict() if setup.scheduler is not None else None,
                "rng": rng_ranks[0],  # rank 0's, as read by checkpoints of one process before rng_ranks
                "rng_ranks": rng_ranks,
            }
            name = f"epoch-{state.epoch:04d}" + (f"-step-{state.step_in_epoch:06d}" if state.step_in_epoch else "")
            c = setup.components
            folder = ckpt.write_checkpoint(self.ckpt_dir / name, model=c.model, extra=c.distiller,
                                           trainer_state=trainer_state,
                                           info={"reason": reason, "epoch": state.epoch,
                                                 "step_in_epoch": state.step_in_epoch,
                                                 "global_step": state.global_step})
            ckpt.set_latest(self.ckpt_dir, folder)
            ckpt.prune(self.ckpt_dir, self.cfg.keep_checkpoints, protect=folder)  # never the one just written
        dist.barrier()

    def _resume(self, setup: TrainingSetup) -> LoopState:
        """The loop state, weights, optimizer, scheduler and random state of the checkpoint to resume from."""
        folder = (resolve_checkpoint(self.run_dir, self.cfg.resume_from) if self.cfg.resume_from
                  else ckpt.resume_folder(self.ckpt_dir, log=self.log))  # LATEST checked, or the newest valid
        if folder is None:
            self.log(f"resume=true but {self.ckpt_dir} has no checkpoint yet: starting from the beginning")
            return LoopState()
        try:
            ckpt.verify_checkpoint(folder)
        except CheckpointError as exc:
            good = [p for p in ckpt.good_folders(self.ckpt_dir) if p != folder]
            hint = (f" The previous good checkpoint is {good[0]}: resume from it with trainer.resume_from={good[0].name}"
                    if good else " No other good checkpoint exists.")
            raise CheckpointError(f"{exc}.{hint}") from None
        load_run_weights(folder, setup.components.model, setup.components.distiller, verify=False)
        ts = ckpt.load_trainer_state(folder)
        setup.optimizer.load_state_dict(ts["optimizer"])
        if setup.scheduler is not None and ts.get("scheduler") is not None:
            setup.scheduler.load_state_dict(ts["scheduler"])
        self._restore_rng(ts)
        state = LoopState(**ts["state"])
        self.log(f"resumed from {folder} (epoch {state.epoch}, step {state.step_in_epoch} of that epoch)")
        return state

    def _restore_rng(self, trainer_state: dict) -> None:
        """This rank's random state from the checkpoint (rank 0's in checkpoints written before rng_ranks)."""
        ranks = trainer_state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world:
            _set_rng_state(ranks[self.rank])
            return
        if ranks is not None:
            self.log(f"warning: the checkpoint was written by {len(ranks)} processes and is resumed by {self.world}: "
                     "every rank continues from rank 0's random state, so the run is not an exact continuation")
        _set_rng_state(trainer_state["rng"])

    # -- the end ---------------------------------------------------------------------------------------------
    def _finish(self, setup: TrainingSetup, state: LoopState, seconds: float) -> dict:
        """Evaluate the best checkpoint on dev and test; write results, test predictions and the confusion plot."""
        c = setup.components
        dist.barrier()  # rank 0 may still be writing best/
        load_run_weights(self.ckpt_dir / "best", c.model, c.distiller)
        dev, _ = evaluate(c, "dev", self.cfg.eval_batch_size, setup.device, setup.precision)
        test, rows = evaluate(c, "test", self.cfg.eval_batch_size, setup.device, setup.precision)
        history = metrics_log.read_history(self.loggers) or []  # none without a logger that reads back
        best_test = max(history, key=lambda r: r["test"][self.cfg.select_metric]) if history else None
        results = {
            "recipe": self.loaded.source,
            "dataset": c.corpus.name,
            "modalities": c.modalities,
            "seed": self.recipe.seed,
            "label_names": list(c.corpus.label_names),
            "selected_on": f"dev {self.cfg.select_metric}",
            "best_epoch": state.best_epoch,
            "epochs_run": state.epoch,
            "dev": dev,
            "test": test,
            # SDT's scripts report the best test epoch; given for comparison with the literature only.
            "reference_best_test_epoch": ({"epoch": best_test["epoch"], **best_test["test"]} if best_test else None),
            "train_seconds": round(seconds, 2),
            # How it ran (trainer.device: auto resolves here): the device, precision and CPU threads used.
            "device": str(setup.device),
            "precision": setup.precision,
            "threads": setup.threads,
        }
        if self.is_main:
            self._write_results(results, rows, c, state)
        return results

    def _write_results(self, results: dict, rows: list[dict], c: Components, state: LoopState) -> None:
        ckpt.atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        ckpt.atomic_write_text(self.run_dir / "predictions_test.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        from mercore.plots import save_confusion_matrix

        test = results["test"]
        save_confusion_matrix(test["confusion_matrix"], c.corpus.label_names, self.run_dir / "confusion_matrix_test.png",
                              title=f"{c.corpus.name} test (epoch {state.best_epoch}, wF1 {test['weighted_f1']:.3f})")


def _summary(report: dict) -> dict:
    return {k: report[k] for k in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1")}
