"""The Trainer: one small loop for every study. What varies lives in the plan (config.py), never in subclasses.

    result = train_from_plan(plan, Path("RUN"), resume=False, overwrite=False, progress=callback)

Per optimizer step: a batch (helper loaders, seeded by (seed, epoch, sample)), autocast (bf16/fp16 on CUDA,
float32 elsewhere), optional mixup, the loss (NaN/Inf stops the run naming the step), backward over
`accumulate` micro-batches, gradient clipping, the optimizer and the per-batch schedule. Every
`checkpoint_every_steps` steps and at each epoch's end: last.pt (everything needed to continue bit-exactly,
data order included: a resumed epoch restarts its loader at the saved step). Every `validate_every` epochs:
per-label Dice on the whole validation cases, predicted as inference predicts (sliding window or slices,
validation.py), best.pt by `best_metric`, early stopping. SIGINT/SIGTERM stop at the next step boundary: last.pt,
status 'stopped', the resume command printed, then the interrupt is raised again for the CLI. Any failure: status
'failed' with the one-line message, traceback in train.log.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from SegCore.errors import SegCoreError
from SegCore.progress import ProgressCallback, ProgressEvent, no_progress
from SegCore.training import components, rstn
from SegCore.training import distributed as ddp
from SegCore.training.validation import best_is_better, validate

ROOT_SEED_MIX = 0x5E6C0  # keeps the per-step torch seed apart from the loader's (seed, epoch, sample) streams


STATUS_SECONDS = 1.0  # status.json is rewritten at least this often while training (a GUI polls it)


class StopRequested(Exception):  # noqa: N818  (a request, not an error)
    """A stop at a step boundary (SIGINT/SIGTERM); carries which interrupt to raise again."""

    def __init__(self, interrupt: type[KeyboardInterrupt]):
        super().__init__(interrupt.__name__)
        self.interrupt = interrupt


class Trainer:
    """Runs one plan into one run folder (rank 0 writes; other ranks only compute)."""

    def __init__(self, plan: dict, out: Path, *, resume: bool, overwrite: bool, progress: ProgressCallback,
                 resume_command: str | None):
        self.plan, self.out, self.progress = plan, Path(out), progress if ddp.rank_from_environment() == 0 \
            else no_progress  # only rank 0 reports
        self.resume, self.overwrite = resume, overwrite
        self.resume_command = resume_command or f"segcore train --data {plan['data']['root']} --out {out} --resume"
        self.t = plan["training"]
        self.run = None

    # ---- set-up -------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        from SegCore.devices import resolve_device
        from SegCore.training.run_folder import RunFolder

        t = self.t
        if t["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        info = resolve_device(str(self.plan["device"]), option="device (--device)")
        self.dist = ddp.init_distributed(info.kind)
        self.device = torch.device(ddp.device_for(self.dist, info.name))
        self.device_info = info
        self.amp = components.amp_dtype(t["amp"], info)
        self.main = self.dist.is_main
        self._split()  # data problems are found before anything is written
        self._build_model()
        if self.main:
            parameters = sum(p.numel() for p in self.model.parameters())
            self.run = RunFolder.open(self.out, resume=self.resume, overwrite=self.overwrite, parameters=parameters)
            self.log = self.run.logger
            self.run.write_status("starting", message="preparing the data")
            if not self.resume:
                self.run.write_plan(self.plan)
        else:
            import logging

            self.log = logging.getLogger(f"segcore.train.rank{self.dist.rank}")
        self.log.info("device %s, %s, world size %d, OpenMP wait policy %s", info.summary(), self.amp or "float32",
                      self.dist.world_size, os.environ.get("OMP_WAIT_POLICY", "the runtime's default"))
        if getattr(self, "init_message", None):
            self.log.info(self.init_message)
        self._prepare_data()

    def _split(self) -> None:
        from SegCore.datasets import open_dataset
        from SegCore.training import components

        data = self.plan["data"]
        dataset = open_dataset(data["root"], data["layout"], **data["options"])
        self.dataset = dataset
        train_cases, val_cases = components.split_cases(dataset, self.plan["split"])
        max_cases = self.t["validation"].get("max_cases")
        self.cases = (train_cases, val_cases[:int(max_cases)] if max_cases else val_cases)

    def _prepare_data(self) -> None:
        from SegCore.training import components
        from SegCore.training.cache import CaseCache
        from SegCore.transforms import Preprocessing

        train_cases, val_cases = self.cases
        pseudo = components.pseudo_labels(self.plan, self.dataset, self.out, self.dist, self.device, self.log,
                                           self.progress)
        if pseudo:
            joins_training = self.plan["distillation"]["subset"] == "training"
            train_cases, val_cases = ((train_cases + pseudo, val_cases) if joins_training
                                      else (train_cases, val_cases + pseudo))
        cache = CaseCache(self.out / "cache", Preprocessing(self.plan["preprocessing"]))
        prepared = {}
        every = sorted({c.case_id: c for c in train_cases + val_cases}.values(), key=lambda c: c.case_id)
        for turn in ((0,), tuple(range(1, self.dist.world_size))):  # rank 0 builds the cache, the others read it
            if self.dist.rank in turn:
                prepared = {c.case_id: c for c in cache.prepare(every, self.progress)}
            ddp.barrier(self.dist)
        for case in every:  # self-distillation: pseudo-labelled cases carry their own loss weight
            if case.metadata.get("pseudo_label"):
                prepared[case.case_id].pseudo = True
                prepared[case.case_id].weight = float(case.metadata.get("loss_weight", 1.0))
        self.train_cached = [prepared[c.case_id] for c in train_cases]
        self.val_cached = [prepared[c.case_id] for c in val_cases]
        self.weighted = any(c.weight != 1.0 for c in self.train_cached)
        spec = self.t.get("class_weights")
        if spec is not None and spec is not False:
            self.loss_fn = components.class_weighted_loss(self.plan, spec, self.train_cached, self.log)
            self.loss_fn = self.loss_fn.to(self.device)
        self.loader = components.build_training_loader(self.plan, self.train_cached, self.dist,
                                                       pin_memory=self.device.type == "cuda")

    def _build_model(self) -> None:
        import logging

        from SegCore.losses import build_loss
        from SegCore.models import build_model
        from SegCore.training import components
        from SegCore.training.checkpoint import checkpoint_meta
        from SegCore.training.optim import build_optimizer, build_scheduler

        t, spec = self.t, self.plan["model"]
        torch.manual_seed(int(t["seed"]))  # the same initial weights on every rank and in every run
        model = build_model(spec["name"], **spec["arguments"]).to(self.device)
        self.meta = checkpoint_meta(self.plan)
        self.label_names = {int(item["value"]): str(item["name"]) for item in self.plan["data"]["label_set"]}
        if t["init"] and not self.resume:
            self.init_message = components.load_initial_weights(model, t["init"], self.meta,
                                                                logging.getLogger("segcore.train"))
        self.frozen_norms = components.freeze(model, list(t["freeze"] or []))
        self.model = model  # the bare network: state_dict, optimizer, mixup hooks
        self.net = self.ddp_net = ddp.wrap_model(model, self.dist, self.device)
        if t["compile"] and self.device.type == "cuda":
            self.net = torch.compile(self.net)
        self.loss_fn = build_loss(self.plan["loss"]["name"], **self.plan["loss"]["arguments"]).to(self.device)
        self.optimizer = build_optimizer(model, self.plan["optim"])
        self.schedule = build_scheduler(self.optimizer, self.plan["schedule"], epochs=int(t["epochs"]),
                                        steps_per_epoch=int(t["steps_per_epoch"]))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "float16" else None
        self.mixup = None
        if self.plan["mixup"]["mode"] != "off":
            from SegCore.training.mixup import Mixup

            self.mixup = Mixup(self.plan["mixup"], model)

    # ---- state --------------------------------------------------------------------------------------------------
    def _save(self, path: Path, epoch: int, step: int, epoch_loss: tuple[float, int]) -> None:
        """Checkpoint at a step boundary (rank 0). Refuses to overwrite last.pt with non-finite weights."""
        from SegCore.training.checkpoint import capture_rng_state, save_checkpoint

        if not self.main:
            return
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise SegCoreError(f"the weights became NaN or Inf by epoch {epoch + 1} step {step}; last.pt keeps the "
                               "last good state", fix="lower the learning rate (optim.lr) or clip gradients")
        save_checkpoint(path, model_state=self.model.state_dict(), optimizer_state=self.optimizer.state_dict(),
                        scheduler_state=self.schedule.state_dict(),
                        scaler_state=self.scaler.state_dict() if self.scaler else None, epoch=epoch, step=step,
                        best_metric=self.best, history=self.history,
                        rng_state={**capture_rng_state(), "epoch_loss": [float(epoch_loss[0]), int(epoch_loss[1])]},
                        meta=self.meta)

    def _step_loss_schedule(self, row: dict) -> None:
        """A loss with a per-epoch schedule (hybrid: alpha) takes the finished epoch and its validation Dice."""
        step = getattr(self.loss_fn, "step_epoch", None)
        if step is not None:
            step(int(row["epoch"]) - 1, row.get("dice_mean"))

    def _restore(self) -> tuple[int, int, tuple[float, int]]:
        from SegCore.training.checkpoint import load_checkpoint, restore_rng_state

        checkpoint = load_checkpoint(self.out / "last.pt")
        self.model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        self.schedule.load_state_dict(checkpoint.scheduler_state)
        if self.scaler is not None and checkpoint.scaler_state:
            self.scaler.load_state_dict(checkpoint.scaler_state)
        self.history, self.best = list(checkpoint.history), checkpoint.best_metric
        for row in self.history:  # the loss's schedule is a function of the finished epochs: replayed
            self._step_loss_schedule(row)
        if self.main:
            self.run.set_history(self.history)  # history.csv as the checkpoint knows it
        restore_rng_state(checkpoint.rng_state)
        total, count = checkpoint.rng_state.get("epoch_loss", [0.0, 0])
        loss = (float(total), int(count))
        self.log.info("resumed from last.pt at epoch %d, step %d", checkpoint.epoch + 1, checkpoint.step)
        return int(checkpoint.epoch), int(checkpoint.step), loss

    def _status(self, state: str, **fields) -> None:
        if self.main:
            self.run.write_status(state, **fields)

    # ---- the loop -----------------------------------------------------------------------------------------------
    def _train_mode(self) -> None:
        self.net.train()
        for module in self.frozen_norms:  # frozen parts keep their BatchNorm statistics
            module.eval()

    def _loss(self, logits, labels, weights=None):
        """The plan's loss; with per-sample weights (pseudo-labelled cases), their weighted mean over the batch."""
        if weights is None:
            return self.loss_fn(logits, labels)
        per_sample = torch.stack([self.loss_fn(logits[i:i + 1], labels[i:i + 1]) for i in range(len(weights))])
        weights = weights.to(per_sample.device, per_sample.dtype)
        return (per_sample * weights).sum() / weights.sum()

    def _forward_loss(self, images, labels, weights, epoch: int, step: int, micro: int):
        autocast = (torch.autocast("cuda", dtype=getattr(torch, self.amp)) if self.amp else nullcontext())
        weights = weights if self.weighted else None
        with autocast:
            if rstn.is_rstn(self.model):  # forward with the label; the study's coarse + fine loss (training/rstn.py)
                return rstn.forward_loss(self.net, images, labels, lambda out, target: self._loss(out, target, weights),
                                         mixup=self.mixup)
            if self.mixup is None:
                return self._loss(self.net(images), labels, weights)
            # one draw per micro-batch: accumulated micro-batches get their own lam and permutation
            rng = np.random.default_rng([int(self.t["seed"]), epoch, step, micro, self.dist.rank, ROOT_SEED_MIX])
            with self.mixup.step(images, labels, rng) as mixed:
                return mixed.loss(lambda out, target: self._loss(out, target, weights), self.net(mixed.images),
                                  labels)

    def _step(self, batches, epoch: int, step: int) -> float:
        """One optimizer step over `accumulate` micro-batches; returns the mean loss (checked finite)."""
        accumulate = len(batches)
        # Dropout and every other torch randomness: a stream of its own per (seed, epoch, step, rank), so a
        # resumed run draws exactly what an uninterrupted one draws.
        torch.manual_seed(int(np.random.SeedSequence([int(self.t["seed"]), epoch, step, self.dist.rank,
                                                      ROOT_SEED_MIX]).generate_state(1)[0]))
        total = 0.0
        for i, (images, labels, details) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            # DDP averages gradients on the last micro-batch only
            sync = self.ddp_net.no_sync() if self.dist.enabled and i < accumulate - 1 else nullcontext()
            with sync:
                loss = self._forward_loss(images, labels, details["weight"], epoch, step, i)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise SegCoreError(f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; the run "
                                       "stopped and last.pt keeps the last good state",
                                       fix="lower the learning rate (optim.lr), clip gradients "
                                           "(training.clip_grad_norm) or check the data's intensities")
                scaled = loss / accumulate
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += value
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.t["clip_grad_norm"]
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], float(clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step_batch()
        return total / accumulate

    def fit(self) -> dict:
        t = self.t
        epochs, steps = int(t["epochs"]), int(t["steps_per_epoch"])
        accumulate, every = int(t["accumulate"]), int(t["checkpoint_every_steps"] or 0)
        self.history, self.best = [], None
        start_epoch, start_step, epoch_loss = 0, 0, (0.0, 0)
        if self.resume:
            start_epoch, start_step, epoch_loss = self._restore()
        writer = components.tensorboard(self.out) if self.main else None
        began, done_steps, total_steps = time.monotonic(), 0, epochs * steps
        status_written = began
        self._status("training", epoch=start_epoch + 1, epochs=epochs, step=start_epoch * steps + start_step,
                     steps=total_steps, best_metric=self.best, message="")
        stopped_early = False
        with components.stop_requests() as requested:
            for epoch in range(start_epoch, epochs):
                epoch_began = time.monotonic()
                self._train_mode()
                batches = iter(self.loader.epoch(epoch, start_step=start_step * accumulate, info=True))
                for step in range(start_step, steps):
                    loss = self._run_step(batches, accumulate, epoch, step)
                    epoch_loss = (epoch_loss[0] + loss, epoch_loss[1] + 1)
                    done_steps += 1
                    global_step = epoch * steps + step + 1
                    eta = (time.monotonic() - began) / done_steps * (total_steps - global_step)
                    self.progress(ProgressEvent("train", global_step, total_steps, f"epoch {epoch + 1}/{epochs}",
                                                {"loss": loss, "lr": self.schedule.lr[0], "eta_s": round(eta, 1)}))
                    if writer is not None:
                        writer.add_scalar("loss/train_step", loss, global_step)
                    if ddp.any_rank(bool(requested), self.dist, self.device):
                        self._save(self.out / "last.pt", epoch, step + 1, epoch_loss)
                        raise StopRequested(requested[0] if requested else KeyboardInterrupt)
                    checkpoint = every and (step + 1) % every == 0 and step + 1 < steps
                    if checkpoint:
                        self._save(self.out / "last.pt", epoch, step + 1, epoch_loss)
                    # status.json: after each step checkpoint (its step is then in last.pt), else about once a second
                    if checkpoint or time.monotonic() - status_written >= STATUS_SECONDS:
                        self._status("training", epoch=epoch + 1, epochs=epochs, step=global_step,
                                     steps=total_steps, loss=loss, eta_s=round(eta, 1), best_metric=self.best)
                        status_written = time.monotonic()
                start_step = 0
                total, count = ddp.all_reduce_sum(epoch_loss, self.dist, self.device)  # every rank's batches
                row = {"epoch": epoch + 1, "loss": float(total / max(count, 1)),
                       "lr": self.schedule.lr[0]}
                epoch_loss = (0.0, 0)
                stopped_early = self._end_epoch(epoch, epochs, row, epoch_began, writer, total_steps)
                if stopped_early:
                    break
        if writer is not None:
            writer.close()
        return self._result(stopped_early)

    def _run_step(self, batches, accumulate: int, epoch: int, step: int) -> float:
        micro = [next(batches) for _ in range(accumulate)]
        try:
            return self._step(micro, epoch, step)
        except torch.cuda.OutOfMemoryError:
            images = micro[0][0]
            raise SegCoreError(f"out of GPU memory on {self.device_info.summary()} at a batch of "
                               f"{images.shape[0]} with patches of {list(images.shape[2:])} voxels",
                               fix="lower the batch (--batch) or the patch (sampler.patch_zyx / size_yx), use "
                                   "mixed precision (training.amp=auto), or --device cpu") from None

    def _end_epoch(self, epoch: int, epochs: int, row: dict, began: float, writer, total_steps: int) -> bool:
        """Validate when due, write history/curves/checkpoints; returns True when early stopping ends the run."""
        t = self.t
        due = (epoch + 1) % int(t["validate_every"]) == 0 or epoch + 1 == epochs
        improved = False
        if due and self.val_cached:
            self._status("validating", epoch=epoch + 1, epochs=epochs)
            metrics = validate(self.net, self.val_cached, self.loss_fn, self.label_names, self.dist, self.device,
                               self.amp, self.plan)
            self._train_mode()
            row.update(metrics)
            key = t["best_metric"]
            if key not in metrics:
                raise SegCoreError(f"training.best_metric {key!r} is not a validation metric",
                                   fix=f"use one of {', '.join(metrics)}")
            improved = best_is_better(key, metrics[key], self.best, float(t["early_stopping"]["min_delta"] or 0))
            if improved:
                self.best = metrics[key]
            self.schedule.step_epoch(metrics[key])
        else:
            self.schedule.step_epoch(None)
        self._step_loss_schedule(row)
        row["best"] = self.best
        row["epoch_time_s"] = round(time.monotonic() - began, 3)
        self.history.append(row)
        self._save(self.out / "last.pt", epoch + 1, 0, (0.0, 0))
        if improved:
            self._save(self.out / "best.pt", epoch + 1, 0, (0.0, 0))
        if self.main:
            self.run.append_history(row)
            self.run.draw_curves()
            if writer is not None:
                for name, value in row.items():
                    if isinstance(value, float) and name != "epoch":
                        writer.add_scalar(f"epoch/{name}", value, epoch + 1)
        self.log.info("epoch %d/%d: %s", epoch + 1, epochs, ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
        self.progress(ProgressEvent("epoch", epoch + 1, epochs, f"epoch {epoch + 1}/{epochs}",
                                    {k: v for k, v in row.items() if isinstance(v, float)}))
        self._status("training", epoch=epoch + 1, epochs=epochs, step=(epoch + 1) * int(t["steps_per_epoch"]),
                     steps=total_steps, loss=row["loss"], last_metric=row.get(t["best_metric"]),
                     best_metric=self.best)
        patience = t["early_stopping"]["patience"]
        if patience and due and self.val_cached:
            validations = [r for r in self.history if t["best_metric"] in r]
            # "best" is the running best: it took its value at the validation that improved last.
            best_at = next((i for i, r in enumerate(validations) if r["best"] == self.best), 0)
            if len(validations) - 1 - best_at >= int(patience):
                self.log.info("early stopping after epoch %d: no better %s for %d validations", epoch + 1,
                              t["best_metric"], patience)
                return True
        return False

    def _result(self, stopped_early: bool) -> dict:
        identical = ddp.same_on_all_ranks(self.model.state_dict(), self.dist, self.device)
        if self.dist.enabled:
            self.log.info("weights %s on all %d ranks", "bit-identical" if identical else "DIFFER",
                          self.dist.world_size)
        last = self.history[-1] if self.history else {}
        epochs = len(self.history)
        summary = (f"trained {epochs} epoch(s){' (early stopping)' if stopped_early else ''}: loss "
                   f"{last.get('loss', float('nan')):.4g}, best {self.t['best_metric']} "
                   f"{f'{self.best:.4g}' if self.best is not None else 'n/a'}; run folder {self.out}")
        self._status("finished", epoch=epochs, epochs=int(self.t["epochs"]), loss=last.get("loss"),
                     last_metric=last.get(self.t["best_metric"]), best_metric=self.best,
                     message="early stopping" if stopped_early else "finished")
        files = [str(self.out / name) for name in ("plan.json", "last.pt", "best.pt", "status.json",
                                                   "history.csv", "curves.png", "train.log")
                 if (self.out / name).exists()]
        return {"summary": summary, "run": str(self.out), "epochs": epochs, "early_stopping": stopped_early,
                "best_metric": self.best, "loss": last.get("loss"), "files": files,
                "world_size": self.dist.world_size, "ranks_identical": identical}


def train_from_plan(plan: dict, out: Path, *, resume: bool = False, overwrite: bool = False,
                    progress: ProgressCallback = no_progress, resume_command: str | None = None) -> dict:
    """Train `plan` (resolved, config.resolve_plan) into run folder `out`; returns a JSON-able result with a
    "summary" line. Raises SegCoreError for bad plans or data before the first step; KeyboardInterrupt (or the
    CLI's Terminated) after a clean stop; any other failure after writing status 'failed' and the traceback."""
    trainer = Trainer(plan, out, resume=resume, overwrite=overwrite, progress=progress,
                      resume_command=resume_command)
    finished = False
    try:
        trainer.setup()
        result = trainer.fit()
        finished = True
        return result
    except StopRequested as stop:
        message = f"stopped; resume with: {trainer.resume_command}"
        if ddp.launched_by_torchrun():
            message += " (under torchrun: the same torchrun command with --resume)"
        _final_status(trainer, "stopped", message)
        if trainer.run is not None:
            print(message, file=sys.stderr, flush=True)
        raise stop.interrupt() from None
    except KeyboardInterrupt:
        has_last = (Path(out) / "last.pt").exists()
        message = f"stopped; resume with: {trainer.resume_command}" if has_last else "stopped before the first step"
        _final_status(trainer, "stopped", message)
        if trainer.run is not None and has_last:
            print(message, file=sys.stderr, flush=True)
        raise
    except BaseException as error:
        from SegCore.failures import describe

        if trainer.run is not None:
            trainer.log.error("failed", exc_info=error)
            _final_status(trainer, "failed", describe(error).message)
        raise
    finally:
        if getattr(trainer, "loader", None) is not None:
            trainer.loader.close()
        if trainer.run is not None:
            trainer.run.close()
        # The DDP wrapper's reducer holds the process group: freed after destroy_process_group, it would destroy
        # the group itself, joining gloo's threads while holding the GIL that they need (a hang at the end of a
        # torchrun run, seen about one run in five). So the wrappers go first, while the group still lives.
        trainer.net = trainer.ddp_net = None
        ddp.shutdown(getattr(trainer, "dist", ddp.DistInfo()), finished=finished)


def _final_status(trainer: Trainer, state: str, message: str) -> None:
    """The last status write; a failure here (the disk that just filled up) must not hide the first error."""
    if trainer.run is None:
        return
    try:
        trainer.run.write_status(state, message=message)
        trainer.log.info(message)
    except Exception:  # noqa: BLE001  (the original error is what the user needs to see)
        pass
