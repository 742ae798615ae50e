"""The training loop with Dassl's lifecycle, hooks, log lines and checkpoint layout.

Forks subclass ``TrainerX`` and override ``build_model``, ``forward_backward`` and
``model_inference`` exactly as they do with Dassl; the differences are fixes listed in
README (no automatic DataParallel, safe checkpoint loading, resumable schedules).
"""
from __future__ import annotations

import datetime
import os
import time
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from tqdm import tqdm

from datasets.manager import DataManager
from trainers.engine.checkpoint import (capture_rng_state, checkpoint_path, latest_checkpoint, load_checkpoint,
                                        load_state_dict_checked, resume_from_checkpoint, save_checkpoint)
from trainers.engine import evaluator as evaluation
from trainers.engine.logger import make_writer, write_scalar
from trainers.engine.meters import AverageMeter, MetricMeter


class TrainerX:
    """Dassl's TrainerBase + SimpleTrainer + TrainerX in one class (labelled data only)."""

    def __init__(self, cfg) -> None:
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: "OrderedDict[str, Optional[torch.optim.Optimizer]]" = OrderedDict()
        self._scheds: "OrderedDict[str, object]" = OrderedDict()
        self._writer = None
        self.check_cfg(cfg)
        self.cfg = cfg
        use_cuda = torch.cuda.is_available() and cfg.USE_CUDA
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.build_data_loader()
        self.build_model()
        self.evaluator = self.build_evaluator()
        self.best_result = -float("inf")

    # ----- building -------------------------------------------------------------------
    def check_cfg(self, cfg) -> None:
        """Hook: validate trainer-specific keys before anything is built."""

    def build_data_loader(self) -> None:
        dm = DataManager(self.cfg)
        self.dm = dm
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
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
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    # ----- checkpoints ------------------------------------------------------------------
    def save_model(self, epoch: int, directory: str, is_best: bool = False,
                   val_result: Optional[float] = None, model_name: str = "") -> None:
        rng_state = capture_rng_state()
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            save_checkpoint({
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                "rng_state": rng_state,
            }, os.path.join(directory, name), is_best=is_best, model_name=model_name)

    def resume_model_if_exist(self, directory: str) -> int:
        names = self.get_model_names()
        if not names or not all(os.path.isdir(os.path.join(directory, n)) for n in names):
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoint at {directory} (will resume training)")
        start_epoch = 0
        for name in names:
            start_epoch = resume_from_checkpoint(os.path.join(directory, name), self._models[name],
                                                 self._optims[name], self._scheds[name])
        return start_epoch

    def load_model(self, directory: str, epoch: Optional[int] = None) -> None:
        """Load weights for evaluation (CoOp's tolerant version: class-dependent buffers dropped).

        ``epoch`` None loads ``model-best.pth.tar``; a negative epoch (DePT's ``--load-epoch -1``)
        the latest ``model.pth.tar-<N>``.
        """
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        for name in self.get_model_names():
            path = latest_checkpoint(directory, name) if epoch is not None and epoch < 0 else \
                checkpoint_path(directory, name, epoch)
            if not os.path.exists(path):
                raise FileNotFoundError(f'Model not found at "{path}"')
            checkpoint = load_checkpoint(path)
            state_dict = self.adapt_loaded_state_dict(name, checkpoint["state_dict"])
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint.get("epoch")})')
            load_state_dict_checked(self._models[name], state_dict, strict=False, source=path)

    def adapt_loaded_state_dict(self, name: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Hook: drop or rename entries of a checkpoint before ``load_model`` applies it."""
        return state_dict

    # ----- the loop ---------------------------------------------------------------------
    def train(self) -> None:
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        directory = self.cfg.RESUME or self.output_dir
        self.start_epoch = self.resume_model_if_exist(directory)
        self._writer = make_writer(os.path.join(self.output_dir, "tensorboard"))
        self.time_start = time.time()

    def before_epoch(self) -> None:
        """Hook."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time, data_time = AverageMeter(), AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        for self.batch_idx, batch in enumerate(self.train_loader_x):
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
            write_scalar(self._writer, "train/lr", self.get_current_lr(), step)
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
    def parse_batch_train(self, batch: dict):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def forward_backward(self, batch: dict) -> Dict[str, float]:
        raise NotImplementedError

    # ----- evaluation ---------------------------------------------------------------------
    def parse_batch_test(self, batch: dict):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

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
        if split == "val" and self.val_loader is not None:
            loader = self.val_loader
        else:
            split, loader = "test", self.test_loader
        print(f"Evaluate on the *{split}* set")
        self.begin_evaluation()
        try:
            for batch in tqdm(loader, dynamic_ncols=True, leave=False):
                images, labels = self.parse_batch_test(batch)
                tasks = batch.get("task")
                logits = self.restrict_to_tasks(self.model_inference(images), tasks)
                self.evaluator.process(logits, labels, tasks=tasks, impaths=batch.get("impath"))
        finally:
            self.end_evaluation()
        results = self.evaluator.evaluate()
        for key, value in results.items():
            if isinstance(value, (int, float)):
                write_scalar(self._writer, f"{split}/{key}", value, self.epoch)
        self.last_results = results
        return list(results.values())[0]
