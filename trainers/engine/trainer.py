"""The training loop with Dassl's lifecycle, hooks, log lines and checkpoint layout.

A method subclasses ``TrainerX``, builds and registers its model in ``build_model`` and
returns its named loss terms from ``loss_terms(batch)``; the engine owns the step:

    loss terms -> sum -> backward -> after_backward() -> every registered optimizer steps
    (through the GradScaler under amp) -> after_step() -> the schedulers at the epoch's end

so nothing a method needs requires overriding the whole step. Method state that must survive a
resume (masks, score accumulators, counters) goes through ``state_dict``/``load_state_dict``
into every checkpoint, beside the best validation result and the GradScaler.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm import tqdm

from clip.errors import InvalidInputError, MissingInputError, UserInputError
from datasets.manager import DataManager
from trainers.engine import distributed
from trainers.engine import evaluator as evaluation
from trainers.engine.checkpoint import (BEST_NAME, CheckpointMismatchError, capture_rng_state, checkpoint_path,
                                        latest_checkpoint, load_checkpoint, load_state_dict_checked,
                                        restore_rng_state, resume_from_checkpoint, save_checkpoint)
from trainers.engine.logger import make_writer, write_scalar
from trainers.engine.meters import AverageMeter, MetricMeter


def compute_accuracy(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)) -> List[torch.Tensor]:
    """Top-k accuracy in percent, one one-element tensor per k (Dassl's helper)."""
    maxk = max(topk)
    pred = output.topk(maxk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum(0, keepdim=True) * (100.0 / target.size(0)) for k in topk]


class NonFiniteLossError(InvalidInputError, FloatingPointError):
    """The loss became NaN or Inf (learning rate, precision): the run stops before the weights do."""


#: checkpoint file of a run stopped by SIGTERM/SIGINT (the pointer file names it until the next save)
STOPPED_NAME = "model-stopped.pth.tar"


class TrainingStopped(Exception):
    """A run stopped on a signal after writing a resumable checkpoint; ``signum`` is the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class Batch:
    """One training batch as a method's loss sees it.

    ``labels`` index the concatenation of all tasks' classes (the task-local label plus the
    task's class offset; unchanged in a single-task run); ``tasks`` holds each sample's task.
    ``targets``: multi-hot rows over all tasks' classes when a task is multi-label (else None).
    """

    images: torch.Tensor
    labels: torch.Tensor
    tasks: torch.Tensor
    targets: Optional[torch.Tensor] = None


@dataclass
class StepOutput:
    """What ``loss_terms`` returns: named loss terms, each already weighted (the engine sums
    them, logs each, and plug-ins reweight or add terms by name), the logits the training
    accuracy is read from, and the raw features behind them (for heads that wrap a method)."""

    losses: "OrderedDict[str, torch.Tensor]"
    logits: torch.Tensor
    image_features: Optional[torch.Tensor] = None
    text_features: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        return sum(self.losses.values())


class TrainerX:
    """Dassl's TrainerBase + SimpleTrainer + TrainerX in one class (labelled data only)."""

    #: checkpoint entries that depend on the class list of the run that wrote them (never loaded)
    class_dependent_keys: tuple = ()

    def __init__(self, cfg) -> None:
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: "OrderedDict[str, Optional[torch.optim.Optimizer]]" = OrderedDict()
        self._scheds: "OrderedDict[str, object]" = OrderedDict()
        self._writer = None
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.last_loss_terms: Dict[str, float] = {}
        try:
            self.check_cfg(cfg)
        except ValueError as error:
            if isinstance(error, UserInputError):
                raise
            # check_cfg judges the user's config: whatever it rejects is an input error (no traceback).
            raise InvalidInputError(str(error)) from error
        self.cfg = cfg
        use_cuda = torch.cuda.is_available() and cfg.USE_CUDA
        # torchrun's processes each run on their own GPU (distributed.init_from_env made it current).
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        print(f"Device: {torch.cuda.get_device_name(self.device) if use_cuda else 'CPU'} ({self.device.type})"
              + (f", {distributed.world_size()} processes" if distributed.is_distributed() else ""))
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        # Checked on every rank before rank 0 builds alone, so each one stops with the message.
        distributed.check_divides(cfg.DATALOADER.TRAIN_X.BATCH_SIZE, "DATALOADER.TRAIN_X.BATCH_SIZE")
        with distributed.rank0_first():  # rank 0 writes the caches (few-shot splits, CLIP files) the others read
            self.build_data_loader()
            self.build_model()
        distributed.broadcast_parameters(self.trainable_parameters())
        self.evaluator = self.build_evaluator()
        self.best_result = -float("inf")

    # ----- building -------------------------------------------------------------------
    def check_cfg(self, cfg) -> None:
        """Hook: validate trainer-specific keys before anything is built (a ValueError it raises
        reaches the user as a config error)."""

    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg)
        self.dm = dm
        if dm.train_loader_u is not None and not self.cfg.DATALOADER.TRAIN_U.SAME_AS_X:
            distributed.check_divides(self.cfg.DATALOADER.TRAIN_U.BATCH_SIZE, "DATALOADER.TRAIN_U.BATCH_SIZE")
        # Several processes: each takes its slice of every global training batch and a block of evaluation.
        self.train_loader_x = distributed.shard_loader(dm.train_loader_x, train=True)
        self.train_loader_u = distributed.shard_loader(dm.train_loader_u, train=True)
        self.val_loader = distributed.shard_loader(dm.val_loader, train=False)
        self.test_loader = distributed.shard_loader(dm.test_loader, train=False)
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname

    def build_model(self) -> None:
        raise NotImplementedError("A trainer must build and register its model")

    def build_evaluator(self) -> evaluation.Classification:
        if self.cfg.VERBOSE:
            print(f"Loading evaluator: {self.cfg.TEST.EVALUATOR}")
        return evaluation.build_evaluator(self.cfg, self.dm.tasks, self.output_dir)

    # ----- registered models ------------------------------------------------------------
    def register_model(self, name: str = "model", model: nn.Module = None, optim=None, sched=None) -> None:
        if name in self._models:
            raise KeyError(f'Model "{name}" is already registered')
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names: Optional[Iterable[str]] = None) -> List[str]:
        known = list(self._models.keys())
        if names is None:
            return known
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name not in known:
                raise KeyError(f'Model "{name}" is not registered; registered: {known}')
        return names

    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def get_current_lr(self, names=None) -> float:
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """Stop on a NaN/Inf loss before it reaches the weights (checkpoints already written stay)."""
        if distributed.all_true(bool(torch.isfinite(loss).all())):
            return
        precision = getattr(self, "precision", None)
        node = getattr(self, "config_node", "<NODE>")
        hint = (f"; PREC fp16 overflows easily: try TRAINER.{node}.PREC fp32 or amp" if precision == "fp16"
                else "; try a lower OPTIM.LR")
        raise NonFiniteLossError(f"Loss is infinite or NaN at epoch {self.epoch + 1}, batch {self.batch_idx + 1} "
                                 f"(precision {precision or 'fp32'}){hint}")

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def _distinct_optimizers(self, names=None) -> List[torch.optim.Optimizer]:
        """Each registered optimizer once (a method may register one optimizer under several names)."""
        seen: Dict[int, torch.optim.Optimizer] = {}
        for name in self.get_model_names(names):
            optim = self._optims[name]
            if optim is not None:
                seen.setdefault(id(optim), optim)
        return list(seen.values())

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Every parameter of the registered models that learns, each once, in a fixed order."""
        seen: Dict[int, nn.Parameter] = {}
        for model in self._models.values():
            for p in model.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
        return list(seen.values())

    def average_gradients(self, num_samples: int) -> None:
        """Several processes: every gradient becomes the sample-weighted mean over them (else nothing)."""
        if distributed.is_distributed():
            distributed.average_gradients(self.trainable_parameters(), num_samples)

    def model_backward(self, loss: torch.Tensor, num_samples: int = 1) -> None:
        """Backward; under amp through the GradScaler, then unscaled so hooks see true gradients.

        Several processes: the gradients are averaged over them, weighted by ``num_samples`` (each
        one's slice of the global batch), before the hooks and the step. Under amp the scaled
        gradients are averaged (every rank has the same scale), so unscaling then finds the same
        Inf/NaN on every rank and all ranks skip or take the step together.
        """
        if self.scaler is None:
            self.detect_anomaly(loss)
            loss.backward()
            self.average_gradients(num_samples)
            return
        self.scaler.scale(loss).backward()
        self.average_gradients(num_samples)
        for optim in self._distinct_optimizers():
            self.scaler.unscale_(optim)

    def model_update(self, names=None) -> None:
        """Step every registered optimizer, once per registered name (Dassl's loop, so an optimizer
        registered under k names takes k steps); under amp each optimizer steps once via the scaler."""
        if self.scaler is not None:
            for optim in self._distinct_optimizers(names):
                self.scaler.step(optim)
            self.scaler.update()
            return
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None, num_samples: int = 1) -> None:
        """One optimisation step; ``num_samples``: this process's share of the global batch."""
        self.model_zero_grad(names)
        self.model_backward(loss, num_samples)
        self.after_backward()
        self.model_update(names)
        self.after_step()

    # ----- checkpoints ------------------------------------------------------------------
    def results_report(self) -> Dict[str, Any]:
        """Hook: method sections for ``results.json`` (Adapt's ``"adapt"``)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """Hook: method state outside the registered modules that a resumed run needs (plain values)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Hook: restore what ``state_dict`` returned."""

    def trainer_state(self) -> Dict[str, Any]:
        return {"best_result": self.best_result,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "method": self.state_dict()}

    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, model_name: str = "",
                   position: Optional[Dict[str, Any]] = None) -> None:
        """Save every registered module as ``<directory>/<name>/``; ``epoch`` is the 0-based epoch
        last completed, ``position`` where inside the next epoch a stopped run continues. Only rank 0
        writes; every rank returns once the files are complete (a later load may read them)."""
        if not distributed.is_main():
            distributed.barrier()
            return
        rng_state = capture_rng_state()
        trainer_state = self.trainer_state()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint({
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                "rng_state": rng_state,
                "trainer_state": trainer_state,
                "position": position,
            }, os.path.join(directory, name), is_best=is_best, model_name=model_name)
        distributed.barrier()

    def resume_model_if_exist(self, directory: str) -> int:
        names = self.get_model_names()
        if not names or not all(os.path.isdir(os.path.join(directory, n)) for n in names):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        checkpoint: Dict[str, Any] = {}
        for name in names:
            checkpoint = resume_from_checkpoint(os.path.join(directory, name), self._models[name],
                                                self._optims[name], self._scheds[name])
        self.restore_trainer_state(checkpoint.get("trainer_state"), directory)
        self._resume_position = checkpoint.get("position")
        if self._resume_position is not None:
            print(f"Continuing epoch {checkpoint['epoch'] + 1} after batch {self._resume_position['batch']}")
        return checkpoint["epoch"]

    def restore_trainer_state(self, state: Optional[Mapping[str, Any]], directory: str) -> None:
        """Best result, GradScaler and method state of a resumed run. Files written before these
        were saved give the best result from ``model-best.pth.tar``'s ``val_result``."""
        if state is None:
            best = os.path.join(directory, self.get_model_names()[0], BEST_NAME)
            if os.path.isfile(best):
                value = load_checkpoint(best).get("val_result")
                self.best_result = value if value is not None else self.best_result
            return
        self.best_result = state["best_result"]
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.load_state_dict(state.get("method") or {})
        print(f"Restored the trainer state (best result so far: {self.best_result})")

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load learned weights from a run's output folder (``--model-dir``), for evaluation or as
        the starting point of a training run (MVLPT's source -> target initialisation).

        ``epoch`` None loads ``model-best.pth.tar``; a negative epoch (DePT's ``--load-epoch -1``)
        the latest ``model.pth.tar-<N>``. Every folder is loaded by ``load_learned_weights``.
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        for name in self.get_model_names():
            path = latest_checkpoint(directory, name) if epoch is not None and epoch < 0 else \
                checkpoint_path(directory, name, epoch)
            if not os.path.exists(path):
                raise MissingInputError(f'Model not found at "{path}"; {_folder_contents(os.path.dirname(path))}')
            checkpoint = load_checkpoint(path)
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint.get("epoch")})')
            self.load_learned_weights(name, checkpoint["state_dict"], path)

    def load_learned_weights(self, name: str, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        """The one loading rule (``--model-dir`` with or without ``--eval-only``, ``MODEL.INIT_WEIGHTS``).

        The method's ``adapt_loaded_state_dict`` first renames or drops entries it knows; then
        class-dependent buffers are dropped (the current class names rebuild them), every other
        entry of the module must be in the file (else an error names the missing keys and the
        file), shapes must match (else an error names key, both shapes and the file), and entries
        the module does not have are listed and skipped.
        """
        module = self._models[name]
        state_dict = self.adapt_loaded_state_dict(name, dict(state_dict))
        state_dict = {k: v for k, v in state_dict.items() if not self.is_class_dependent(k)}
        own = module.state_dict()
        missing = [k for k in own if k not in state_dict and not self.is_class_dependent(k)]
        if missing:
            raise CheckpointMismatchError(
                f'Checkpoint "{source}" lacks tensors that {type(self).__name__} learns in {name}: '
                f"{_listed(missing)}; it was written by a run with other settings "
                f"({self.learned_settings() or 'see its config'}); use that run's settings")
        extra = [k for k in state_dict if k not in own]
        if extra:
            print(f"Skipping checkpoint entries this model does not have: {_listed(extra)}")
        load_state_dict_checked(module, {k: v for k, v in state_dict.items() if k in own}, strict=False,
                                source=source)

    def is_class_dependent(self, key: str) -> bool:
        return key.split(".")[-1] in self.class_dependent_keys

    def learned_settings(self) -> str:
        """Hook: the config keys that shape the learned tensors, quoted in loading errors."""
        return ""

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Hook: rename or drop entries of a checkpoint before the loading rule applies it."""
        return state_dict

    # ----- the loop ---------------------------------------------------------------------
    def train(self) -> None:
        with self.stop_on_signals():
            self.before_train()
            for self.epoch in range(self.start_epoch, self.max_epoch):
                self.before_epoch()
                self.run_epoch()
                self.after_epoch()
        self.after_train()

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGTERM (SLURM's notice before a kill) and SIGINT (Ctrl-C) stop the run after the current
        iteration with a resumable checkpoint; a second Ctrl-C stops at once."""
        self._stop_signal: Optional[int] = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            print(f"\nReceived {signal.Signals(signum).name}: stopping after this iteration with a resumable "
                  "checkpoint (Ctrl-C again stops at once)", flush=True)

        previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_if_requested(self) -> None:
        """After an iteration: on a stop request, save where the run is and raise ``TrainingStopped``."""
        signum = distributed.max_over_ranks(self._stop_signal or 0)  # every rank stops at the same batch
        if not signum:
            return
        self._stop_signal = signum
        position = {"batch": self.batch_idx + 1, "epoch_rng": self._epoch_rng}
        self.save_model(self.epoch - 1, self.output_dir, model_name=STOPPED_NAME, position=position)
        raise TrainingStopped(self._stop_signal, f"Stopped at epoch {self.epoch + 1}, batch {self.batch_idx + 1} "
                                                 f"of {self.num_batches}; run the same command to continue")

    def train_batches(self) -> Iterator[Tuple[int, dict]]:
        """The epoch's batches; a resumed stopped run replays its epoch's order and skips the batches done."""
        distributed.sync_rng_state()  # several processes: every sampler draws rank 0's permutation
        self._epoch_rng = capture_rng_state()
        position, self._resume_position = getattr(self, "_resume_position", None), None
        if position is None:
            yield from enumerate(self.train_loader_x)
            return
        stopped_rng, self._epoch_rng = self._epoch_rng, position["epoch_rng"]
        restore_rng_state(self._epoch_rng)
        batches = iter(self.train_loader_x)
        for _ in range(position["batch"]):
            next(batches)
        restore_rng_state(stopped_rng)
        yield from enumerate(batches, start=position["batch"])

    def before_train(self) -> None:
        self.check_model_selection()
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        sampler = distributed.index_sampler(self.train_loader_x)
        if getattr(sampler, "generator", None) is not None:
            # A loader shuffled by its own generator (ELEVATER's, seeded 0): draw the finished epochs'
            # orders again so a resumed run continues with the uninterrupted run's order.
            for _ in range(self.start_epoch):
                list(sampler)
        self._writer = make_writer(os.path.join(self.output_dir, "tensorboard")) if distributed.is_main() else None
        self.time_start = time.time()

    def check_model_selection(self) -> None:
        """``TEST.FINAL_MODEL best_val`` selects on the validation split: there must be one."""
        if self.cfg.TEST.FINAL_MODEL == "best_val" and not self.cfg.TEST.NO_TEST and self.val_loader is None:
            raise InvalidInputError(f"TEST.FINAL_MODEL best_val selects the model on the validation set, but "
                             f"{self.cfg.DATASET.NAME} has none in this run (DATASET.NUM_SHOTS "
                             f"{self.cfg.DATASET.NUM_SHOTS}); set TEST.FINAL_MODEL last_step")

    def before_epoch(self) -> None:
        """Hook."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time, data_time = AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        for self.batch_idx, batch in self.train_batches():
            data_time.update(time.time() - end)
            loss_summary = self.forward_backward(batch)
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                remaining = (self.num_batches - self.batch_idx - 1) + \
                    (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = datetime.timedelta(seconds=int(batch_time.avg * remaining))
                print(" ".join([
                    f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                    f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                    f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                    str(losses),
                    f"lr {self.get_current_lr():.4e}",
                    f"eta {eta}",
                ]))
            step = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                write_scalar(self._writer, "train/" + name, meter.avg, step)
            if len(self.last_loss_terms) > 1:
                for name, value in self.last_loss_terms.items():
                    write_scalar(self._writer, "train/loss_" + name, value, step)
            write_scalar(self._writer, "train/lr", self.get_current_lr(), step)
            self.stop_if_requested()
            end = time.time()

    def after_epoch(self) -> None:
        last_epoch = (self.epoch + 1) == self.max_epoch
        do_test = not self.cfg.TEST.NO_TEST
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        meet_checkpoint_freq = freq > 0 and (self.epoch + 1) % freq == 0
        if do_test and self.cfg.TEST.FINAL_MODEL == "best_val":
            result = self.test(split="val")
            if result > self.best_result:
                self.best_result = result
                self.save_model(self.epoch, self.output_dir, val_result=result, model_name="model-best.pth.tar")
        if meet_checkpoint_freq or last_epoch:
            self.save_model(self.epoch, self.output_dir)

    def after_train(self) -> None:
        # Both markers: MaPLe/KgCoOp/SoftCPT parsers wait for the first, CoOp/MVLPT for the second.
        print("Finished training")
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir)
            else:
                print("Deploy the last-epoch model")
            self.test()
        elapsed = datetime.timedelta(seconds=round(time.time() - self.time_start))
        print(f"Elapsed: {elapsed}")
        if self._writer is not None:
            self._writer.close()

    # ----- training step ------------------------------------------------------------------
    def parse_batch_train(self, batch: dict) -> Batch:
        """Images, labels over all tasks' classes and task ids, on the device."""
        labels = batch["label"].to(self.device)
        tasks = batch.get("task")
        tasks = tasks.to(self.device) if tasks is not None else torch.zeros_like(labels)
        targets = batch.get("targets")
        targets = targets.to(self.device) if targets is not None else None
        return Batch(batch["img"].to(self.device), self.labels_in_all_classes(labels, tasks), tasks, targets)

    def autocast(self) -> "contextlib.AbstractContextManager[None]":
        """Hook: the precision context of the forward passes (training and evaluation)."""
        return contextlib.nullcontext()

    def loss_terms(self, batch: Batch) -> StepOutput:
        """Hook: the method's named loss terms for one batch."""
        raise NotImplementedError("A trainer must return its loss terms from loss_terms(batch)")

    def after_backward(self) -> None:
        """Hook: gradients are final (and unscaled), the optimizers have not stepped yet."""

    def after_step(self) -> None:
        """Hook: the optimizers have stepped."""

    def loss_summary(self, output: StepOutput, batch: Batch) -> Dict[str, float]:
        """Hook: the values printed for a training batch (CoOp: loss and top-1 accuracy)."""
        logits = self.mask_other_tasks(output.logits, batch.tasks)
        return {"loss": output.loss.item(), "acc": compute_accuracy(logits, batch.labels)[0].item()}

    def forward_backward(self, batch: dict) -> Dict[str, float]:
        """One step: loss terms -> backward -> hooks -> optimizers; the schedulers after the
        epoch's last batch (where Dassl's trainers step them)."""
        step_batch = self.parse_batch_train(batch)
        with self.autocast():
            output = self.loss_terms(step_batch)
        num_samples = len(step_batch.labels)
        self.model_backward_and_update(output.loss, num_samples=num_samples)
        # Several processes: the values over the global batch, as one process prints them.
        self.last_loss_terms = distributed.weighted_mean(
            {name: term.item() for name, term in output.losses.items()}, num_samples)
        summary = distributed.weighted_mean(self.loss_summary(output, step_batch), num_samples)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary

    def compute_loss(self, images: torch.Tensor, labels: torch.Tensor,
                     tasks: Optional[torch.Tensor] = None) -> "tuple[torch.Tensor, torch.Tensor]":
        """(summed loss, logits) of ``loss_terms`` for a batch given as tensors (labels over all classes)."""
        tasks = tasks if tasks is not None else torch.zeros_like(labels)
        with self.autocast():
            output = self.loss_terms(Batch(images, labels, tasks))
        return output.loss, output.logits

    # ----- evaluation ---------------------------------------------------------------------
    def parse_batch_test(self, batch: dict):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, images: torch.Tensor, tasks: Optional[torch.Tensor] = None) -> torch.Tensor:
        with self.autocast():
            return self.model(images, tasks)

    @property
    def classnames(self) -> List[str]:
        """Every task's class names, concatenated in task order (one task: its classes)."""
        return [name for task in self.dm.tasks for name in task.classnames]

    def restrict_to_tasks(self, logits: torch.Tensor, tasks: Optional[torch.Tensor]):
        """Logits over all tasks' classes -> each row over its own task's classes.

        Returns the tensor unchanged for one task, else a list of 1-D tensors (the evaluator
        accepts rows of different lengths).
        """
        if len(self.dm.tasks) == 1 or tasks is None:
            return logits
        return [row[t.class_offset:t.class_offset + t.num_classes]
                for row, t in zip(logits, (self.dm.tasks[int(i)] for i in tasks))]

    def _task_offsets(self, tasks: torch.Tensor, device) -> "tuple[torch.Tensor, torch.Tensor]":
        offsets = torch.tensor([t.class_offset for t in self.dm.tasks], device=device)[tasks]
        sizes = torch.tensor([t.num_classes for t in self.dm.tasks], device=device)[tasks]
        return offsets, sizes

    def labels_in_all_classes(self, labels: torch.Tensor, tasks: Optional[torch.Tensor]) -> torch.Tensor:
        """Task-local labels -> indices into the concatenation of all tasks' classes."""
        if len(self.dm.tasks) == 1 or tasks is None:
            return labels
        return labels + self._task_offsets(tasks, labels.device)[0]

    def mask_other_tasks(self, logits: torch.Tensor, tasks: Optional[torch.Tensor]) -> torch.Tensor:
        """Set logits outside each row's task to -inf, so cross-entropy and argmax stay in the task."""
        if len(self.dm.tasks) == 1 or tasks is None:
            return logits
        offsets, sizes = self._task_offsets(tasks, logits.device)
        columns = torch.arange(logits.shape[1], device=logits.device)[None]
        inside = (columns >= offsets[:, None]) & (columns < (offsets + sizes)[:, None])
        return logits.masked_fill(~inside, float("-inf"))

    def begin_evaluation(self) -> None:
        """Hook: work done once per evaluation (e.g. encoding a fixed prompt's class texts)."""

    def end_evaluation(self) -> None:
        """Hook: release what ``begin_evaluation`` prepared."""

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> float:
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = split or self.cfg.TEST.SPLIT
        if split == "val":
            if self.val_loader is None:
                raise InvalidInputError(f"Asked to evaluate on the validation set (TEST.SPLIT or TEST.FINAL_MODEL "
                                 f"best_val), but {self.cfg.DATASET.NAME} has none in this run")
            loader = self.val_loader
        else:
            split, loader = "test", self.test_loader
        print(f"Evaluate on the *{split}* set")
        self.begin_evaluation()
        try:
            for batch in tqdm(loader, dynamic_ncols=True, leave=False, disable=not distributed.is_main()):
                images, labels = self.parse_batch_test(batch)
                tasks = batch.get("task")
                device_tasks = tasks.to(self.device) if tasks is not None else None
                logits = self.restrict_to_tasks(self.model_inference(images, device_tasks), tasks)
                targets = batch.get("targets")
                targets = self.restrict_to_tasks(targets, tasks) if targets is not None else None
                self.evaluator.process(logits, labels, tasks=tasks, impaths=batch.get("impath"), targets=targets)
        finally:
            self.end_evaluation()
        results = self.evaluator.evaluate()
        for key, value in results.items():
            if isinstance(value, (int, float)):
                write_scalar(self._writer, f"{split}/{key}", value, self.epoch)
        self.last_results = results
        return list(results.values())[0]


def _listed(keys: List[str], limit: int = 8) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _folder_contents(folder: str) -> str:
    """What a checkpoint folder holds, for "not found" messages (pass --load-epoch N for model.pth.tar-N)."""
    if not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if not os.path.isdir(parent):
            return f'the run folder "{parent}" does not exist'
        return f'"{parent}" holds no {os.path.basename(folder)}/ folder (is it a run of this trainer?); it has: ' + \
            (", ".join(sorted(os.listdir(parent))) or "nothing")
    files = sorted(f for f in os.listdir(folder) if f.startswith("model"))
    return f'"{folder}" holds: {", ".join(files) if files else "no checkpoint files"}'
