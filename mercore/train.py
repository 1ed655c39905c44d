"""Building a run's components from a validated recipe, training, and evaluating.

Reproducibility: the training order of epoch ``e`` is a permutation drawn from a generator seeded with
``(seed, e)``, so it never depends on what ran before; the global RNG (dropout, Gumbel noise) is saved in
every checkpoint. A resumed CPU run therefore ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np
import torch

from mercore import checkpoint as ckpt
from mercore import distributed as dist
from mercore.config import config_to_dict
from mercore.data.types import PAD_LABEL, Corpus, DialogueBatch, iterate_batches
from mercore.errors import CheckpointError, ConfigError, TrainingError
from mercore.metrics import classification_report
from mercore.model_api import ModelOutput
from mercore.progress import Progress
from mercore.recipe import LoadedRecipe, Recipe
from mercore.yaml_io import dump_yaml

# Keys of the recipe that may differ between the interrupted run and its resumption.
RESUME_MAY_DIFFER = {"resume", "trainer.resume_from", "trainer.progress", "trainer.device", "trainer.threads"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"trainer.device: {name!r} requested but CUDA is not available (use cpu or auto)"])
    return device


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


def build_components(recipe: Recipe, corpus: Corpus | None = None) -> Components:
    """Load the data and build model, loss and distiller from the recipe's nodes."""
    if corpus is None:
        corpus = recipe.data.build().load()
    context = dict(modality_dims=dict(corpus.modality_dims), num_classes=corpus.num_classes,
                   num_speakers=corpus.num_speakers, label_names=list(corpus.label_names))
    model = recipe.model.build(**context)
    loss_fn = recipe.loss.build(num_classes=corpus.num_classes, train_label_counts=label_counts(corpus))
    distiller = recipe.distiller.build(student=model, **context) if recipe.distiller is not None else None
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
    terms.update(out.aux_losses)
    if c.distiller is not None:
        terms.update(c.distiller(out, teacher_out, batch))
    return out, terms


@torch.no_grad()
def evaluate(c: Components, split: str, batch_size: int, device: torch.device) -> tuple[dict, list[dict]]:
    """Metrics of ``split`` and the per-utterance predictions ``{dialogue, index, gold, pred}``."""
    c.model.eval()
    if c.distiller is not None:
        c.distiller.eval()
    golds, preds, rows = [], [], []
    # The teacher's forward is needed at evaluation only by a model that lets it guide there.
    guides_at_eval = bool(getattr(getattr(c.model, "config", None), "guide_at_eval", False))
    for batch in iterate_batches(c.corpus.split(split), c.modalities, batch_size):
        batch = batch.to(device)
        teacher_out = c.distiller.teacher_output(batch) if c.distiller is not None and guides_at_eval else None
        logits = c.model(batch, teacher=teacher_out).logits
        pred = logits.argmax(-1)
        keep = batch.mask & (batch.labels != PAD_LABEL)
        golds.append(batch.labels[keep].cpu())
        preds.append(pred[keep].cpu())
        for b, did in enumerate(batch.dialogue_ids):
            for t in torch.nonzero(keep[b]).flatten().tolist():
                rows.append({"dialogue": did, "index": t, "gold": int(batch.labels[b, t]), "pred": int(pred[b, t])})
    gold = torch.cat(golds) if golds else torch.zeros(0, dtype=torch.long)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    return classification_report(gold, pred, c.corpus.label_names), rows


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _check_resume_recipe(saved: dict, current: dict) -> None:
    a, b = _flatten(saved), _flatten(current)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUME_MAY_DIFFER)
    if differ:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differ[:8])
        raise ConfigError([f"resume=true but the recipe differs from the interrupted run's recipe.yaml: {shown}. "
                           "Resume with the same recipe and overrides, or start a new output_dir."])


class Trainer:
    """Trains one recipe into its run directory; see the module docstring for the reproducibility contract."""

    def __init__(self, loaded: LoadedRecipe, *, log: Callable[[str], None] = print):
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.cfg = self.recipe.trainer
        self.run_dir = Path(self.recipe.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.rank, self.world = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        self._log = log
        self._stop_requested = False
        # Sums and counts of ModelOutput.stats over this epoch's training steps (logged as the epoch's means;
        # after a mid-epoch resume they cover the steps since the resume).
        self._stat_sums: dict[str, list[float]] = {}

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # -- set-up ----------------------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        saved_recipe = self.run_dir / "recipe.yaml"
        has_run = self.ckpt_dir.exists() and any(self.ckpt_dir.iterdir())
        if has_run and not self.recipe.resume:
            raise ConfigError([f"output_dir {str(self.run_dir)!r} already holds a run (checkpoints/); "
                               "pass resume=true to continue it, or choose another output_dir"])
        if self.recipe.resume and saved_recipe.exists():
            from mercore.yaml_io import parse_yaml

            saved, _ = parse_yaml(saved_recipe.read_text(), source=str(saved_recipe))
            _check_resume_recipe(saved, self._recipe_to_save())
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(saved_recipe, dump_yaml(self._recipe_to_save()))

    def _recipe_to_save(self) -> dict:
        """The fully resolved recipe (every default written out), minus the keys of this invocation only."""
        data = config_to_dict(self.recipe)
        data.pop("resume", None)
        data["trainer"].pop("resume_from", None)
        return data

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train, select on dev, evaluate the selected checkpoint on test, write ``results.json``."""
        t_start = time.perf_counter()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        device = resolve_device(self.cfg.device if not dist.is_distributed() else dist.device_for_rank(self.cfg.device))
        seed_everything(self.recipe.seed)
        self._prepare_run_dir()
        c = build_components(self.recipe)
        c.model.to(device)
        if c.distiller is not None:
            c.distiller.to(device)
        train_set = c.corpus.split("train")
        c.corpus.split("dev"), c.corpus.split("test")  # fail now, not after training, when a split is missing
        params = list(c.model.named_parameters())
        if c.distiller is not None:
            params += [(f"distiller.{n}", p) for n, p in c.distiller.named_parameters()]
        optimizer = self.recipe.optimizer.build(params=params)
        steps_per_epoch = math.ceil(len(train_set) / self.cfg.batch_size)
        total_steps = steps_per_epoch * self.cfg.epochs
        scheduler = (self.recipe.scheduler.build(optimizer=optimizer, total_steps=total_steps)
                     if self.recipe.scheduler is not None else None)
        train_model = dist.wrap_model(c.model, device) if dist.is_distributed() else c.model
        n_params = sum(p.numel() for p in c.model.parameters() if p.requires_grad)
        self.log(f"data: {c.corpus.name} ({c.corpus.source}) modalities {c.modalities} "
                 f"train/dev/test dialogues {len(train_set)}/{len(c.corpus.split('dev'))}/{len(c.corpus.split('test'))}")
        self.log(f"model: {self.recipe.model.name} with {n_params:,} trainable parameters on {device}"
                 + (f", {self.world} processes" if self.world > 1 else ""))

        state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": -1,
                 "epoch_loss_sum": 0.0, "epoch_loss_count": 0, "epochs_without_improvement": 0}
        if self.recipe.resume:
            state = self._resume(c, optimizer, scheduler, state)

        metrics_path = self.run_dir / "metrics.jsonl"
        old_handler = signal.getsignal(signal.SIGINT)
        if self.is_main:
            self._keep_metrics_before(metrics_path, state["epoch"])
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread
            pass
        try:
            while state["epoch"] < self.cfg.epochs:
                epoch = state["epoch"]
                t_epoch = time.perf_counter()
                c.model.train()
                if c.distiller is not None:
                    c.distiller.train()
                order = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + epoch)
                batches = iterate_batches(train_set, c.modalities, self.cfg.batch_size, generator=order)
                bar = Progress(batches, steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                               enabled=self.cfg.progress and self.is_main)
                for step, batch in enumerate(bar):
                    if step < state["step_in_epoch"]:
                        continue  # already trained before the interruption
                    batch = dist.shard_batch(batch, self.rank, self.world).to(device)
                    loss, terms = self._train_step(c, train_model, batch, optimizer, scheduler, epoch, step, state)
                    state["epoch_loss_sum"] += loss
                    state["epoch_loss_count"] += 1
                    state["step_in_epoch"] = step + 1
                    state["global_step"] += 1
                    bar.postfix = f"loss {loss:.4f}"
                    if self._stop_requested:
                        self._save(c, optimizer, scheduler, state, reason="interrupted")
                        self.log(f"interrupted: saved a checkpoint at epoch {epoch + 1} step {step + 1}; "
                                 f"continue with: mercore run {self.loaded.source} resume=true output_dir={self.run_dir}")
                        raise KeyboardInterrupt
                dev, _ = evaluate(c, "dev", self.cfg.eval_batch_size, device)
                test, _ = evaluate(c, "test", self.cfg.eval_batch_size, device)
                score = dev[self.cfg.select_metric]
                improved = score > state["best_score"]
                train_loss = state["epoch_loss_sum"] / max(state["epoch_loss_count"], 1)
                record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
                          "dev": _summary(dev), "test": _summary(test), "selected": improved,
                          "seconds": round(time.perf_counter() - t_epoch, 3)}
                if self._stat_sums:
                    record["stats"] = {k: total / n for k, (total, n) in sorted(self._stat_sums.items())}
                    self._stat_sums = {}
                if improved:
                    state["best_score"], state["best_epoch"] = score, epoch + 1
                    state["epochs_without_improvement"] = 0
                    if self.is_main:
                        ckpt.write_checkpoint(self.ckpt_dir / "best", model=c.model, extra=c.distiller,
                                              info={"epoch": epoch + 1, "dev": _summary(dev)})
                else:
                    state["epochs_without_improvement"] += 1
                state.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
                if self.is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                self._save(c, optimizer, scheduler, state, reason="epoch")
                self.log(f"epoch {epoch + 1:3d}/{self.cfg.epochs}  loss {train_loss:.4f}  "
                         f"dev acc {dev['accuracy']:.4f} wF1 {dev['weighted_f1']:.4f}  "
                         f"test acc {test['accuracy']:.4f} wF1 {test['weighted_f1']:.4f}  "
                         f"{record['seconds']:.1f}s{'  *' if improved else ''}")
                if self.cfg.patience is not None and state["epochs_without_improvement"] >= self.cfg.patience:
                    self.log(f"early stop: no dev {self.cfg.select_metric} improvement for {self.cfg.patience} epochs")
                    break
        finally:
            try:
                signal.signal(signal.SIGINT, old_handler)
            except ValueError:
                pass
        return self._finish(c, device, state, time.perf_counter() - t_start)

    def _train_step(self, c, train_model, batch, optimizer, scheduler, epoch, step, state) -> tuple[float, dict]:
        out, terms = forward_batch(c, batch, model=train_model)
        for key, value in out.stats.items():
            acc = self._stat_sums.setdefault(key, [0.0, 0])
            acc[0], acc[1] = acc[0] + float(value), acc[1] + 1
        total = sum(terms.values())
        total = dist.scale_loss(total, batch)
        if not torch.isfinite(total):
            shown = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            last = ckpt.latest_folder(self.ckpt_dir)
            raise TrainingError(
                f"non-finite loss at epoch {epoch + 1}, step {step + 1} (global step {state['global_step'] + 1}), "
                f"dialogues {batch.dialogue_ids[:4]}{'...' if len(batch.dialogue_ids) > 4 else ''}: {shown}. "
                f"The last good checkpoint is kept: {last if last else 'none yet'}. "
                "Lower the learning rate, enable trainer.grad_clip, or check the input features for NaN.")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.cfg.grad_clip is not None:
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            if not torch.isfinite(norm):
                raise TrainingError(f"non-finite gradient norm at epoch {epoch + 1}, step {step + 1}; "
                                    f"loss terms: {', '.join(f'{k}={float(v.detach()):.4g}' for k, v in terms.items())}")
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return float(dist.mean_across_ranks(total.detach())), terms

    def _on_sigint(self, signum, frame) -> None:
        if self._stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort without saving)")

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save(self, c: Components, optimizer, scheduler, state: dict, reason: str) -> None:
        if not self.is_main:
            return
        trainer_state = {
            "state": dict(state),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
        }
        name = f"epoch-{state['epoch']:04d}" + (f"-step-{state['step_in_epoch']:06d}" if state["step_in_epoch"] else "")
        folder = ckpt.write_checkpoint(self.ckpt_dir / name, model=c.model, extra=c.distiller,
                                       trainer_state=trainer_state, info={"reason": reason, **{
                                           k: state[k] for k in ("epoch", "step_in_epoch", "global_step")}})
        ckpt.set_latest(self.ckpt_dir, folder)
        ckpt.prune(self.ckpt_dir, self.cfg.keep_checkpoints)

    def _resume(self, c: Components, optimizer, scheduler, state: dict) -> dict:
        if self.cfg.resume_from:
            folder = Path(self.cfg.resume_from)
            folder = folder if folder.is_absolute() or folder.exists() else self.ckpt_dir / folder
        else:
            folder = ckpt.latest_folder(self.ckpt_dir)
        if folder is None:
            self.log(f"resume=true but {self.ckpt_dir} has no checkpoint yet: starting from the beginning")
            return state
        try:
            ckpt.verify_checkpoint(folder)
        except CheckpointError as exc:
            good = [p for p in ckpt.good_folders(self.ckpt_dir) if p != folder]
            hint = (f" The previous good checkpoint is {good[0]}: resume from it with trainer.resume_from={good[0].name}"
                    if good else " No other good checkpoint exists.")
            raise CheckpointError(f"{exc}.{hint}") from None
        ckpt.load_weights(folder, c.model, verify=False)
        if c.distiller is not None and (folder / "extra.safetensors").exists():
            ckpt.load_weights(folder, c.distiller, file="extra.safetensors", verify=False)
        ts = ckpt.load_trainer_state(folder)
        optimizer.load_state_dict(ts["optimizer"])
        if scheduler is not None and ts.get("scheduler") is not None:
            scheduler.load_state_dict(ts["scheduler"])
        _set_rng_state(ts["rng"])
        state = dict(ts["state"])
        self.log(f"resumed from {folder} (epoch {state['epoch']}, step {state['step_in_epoch']} of that epoch)")
        return state

    @staticmethod
    def _keep_metrics_before(path: Path, epoch: int) -> None:
        """Drop metric lines of epochs that the resumed run will redo (written after the last checkpoint)."""
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["epoch"] <= epoch]
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in keep))

    # -- the end ---------------------------------------------------------------------------------------------
    def _finish(self, c: Components, device: torch.device, state: dict, seconds: float) -> dict:
        dist.barrier()  # rank 0 may still be writing best/
        best = self.ckpt_dir / "best"
        ckpt.load_weights(best, c.model)
        if c.distiller is not None and (best / "extra.safetensors").exists():
            ckpt.load_weights(best, c.distiller, file="extra.safetensors")
        dev, _ = evaluate(c, "dev", self.cfg.eval_batch_size, device)
        test, rows = evaluate(c, "test", self.cfg.eval_batch_size, device)
        history = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        best_test = max(history, key=lambda r: r["test"][self.cfg.select_metric]) if history else None
        results = {
            "recipe": self.loaded.source,
            "dataset": c.corpus.name,
            "modalities": c.modalities,
            "seed": self.recipe.seed,
            "label_names": list(c.corpus.label_names),
            "selected_on": f"dev {self.cfg.select_metric}",
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "dev": dev,
            "test": test,
            # SDT's scripts report the best test epoch; given for comparison with the literature only.
            "reference_best_test_epoch": ({"epoch": best_test["epoch"], **best_test["test"]} if best_test else None),
            "train_seconds": round(seconds, 2),
        }
        if self.is_main:
            ckpt.atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
            ckpt.atomic_write_text(self.run_dir / "predictions_test.jsonl",
                                   "".join(json.dumps(r) + "\n" for r in rows))
            from mercore.plots import save_confusion_matrix

            save_confusion_matrix(test["confusion_matrix"], c.corpus.label_names,
                                  self.run_dir / "confusion_matrix_test.png",
                                  title=f"{c.corpus.name} test (epoch {state['best_epoch']}, wF1 {test['weighted_f1']:.3f})")
        return results


def _summary(report: dict) -> dict:
    return {k: report[k] for k in ("accuracy", "weighted_f1", "macro_f1", "per_class_f1")}
