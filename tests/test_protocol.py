"""The trainer protocol: the step with hooks, named loss terms, method state in checkpoints,
the one loading rule, and the errors that replace silent fallbacks."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping

import pytest
import torch
import torch.nn.functional as F

import train
from trainers.coop import CoOp
from trainers.engine.checkpoint import CheckpointMismatchError
from trainers.engine.logger import close_logger
from trainers.engine.registry import build_trainer
from trainers.engine.trainer import Batch

TINY_COOP = ["--trainer", "CoOp", "--dataset-config-file", "configs/datasets/synthetic.yaml",
             "--config-file", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml"]


def config(root: str, out: str, *opts: str, flags=()):
    args = train.build_parser().parse_args(
        TINY_COOP + ["--root", root, "--seed", "1", "--output-dir", out] + list(flags)
        + ["TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", "8", "TRAINER.COOP.PREC", "fp32"] + list(opts))
    return train.setup_cfg(args)


def make(cfg, trainer_class=None):
    """A trainer for ``cfg`` (seeded as train.py seeds), built outside train.main."""
    train.set_random_seed(cfg.SEED)
    try:
        return trainer_class(cfg) if trainer_class is not None else build_trainer(cfg)
    finally:
        close_logger()


class ObservedCoOp(CoOp):
    """CoOp with a method state (a step counter and a running gradient-norm sum) kept by the hooks."""

    def build_model(self) -> None:
        super().build_model()
        self.steps = 0
        self.grad_norm_sum = torch.zeros(())
        self.events: List[str] = []

    def after_backward(self) -> None:
        ctx = self.model.prompt_learner.ctx
        self.events.append("after_backward")
        self._before_step = ctx.detach().clone()
        self.grad_norm_sum += ctx.grad.norm().detach()

    def after_step(self) -> None:
        self.events.append("after_step")
        self.stepped_after_hook = not torch.equal(self._before_step, self.model.prompt_learner.ctx)
        self.steps += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"steps": self.steps, "grad_norm_sum": self.grad_norm_sum}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps, self.grad_norm_sum = state["steps"], state["grad_norm_sum"]


@pytest.mark.slow
def test_hooks_run_between_backward_and_step_and_method_state_survives_a_resume(data_root, tmp_path):
    opts = ("OPTIM.MAX_EPOCH", "4", "TRAIN.CHECKPOINT_FREQ", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
            "TEST.NO_TEST", "True")
    full = make(config(data_root, str(tmp_path / "full"), *opts), ObservedCoOp)
    full.train()
    assert full.events[:4] == ["after_backward", "after_step"] * 2
    assert full.stepped_after_hook  # the optimizer stepped between the two hooks
    assert full.steps == 4 * full.num_batches

    # The same run, cut after epoch 2 (what epochs 3-4 wrote removed), then resumed.
    again = str(tmp_path / "again")
    make(config(data_root, again, *opts), ObservedCoOp).train()
    os.remove(os.path.join(again, "prompt_learner", "model.pth.tar-4"))
    with open(os.path.join(again, "prompt_learner", "checkpoint"), "w") as f:
        f.write("model.pth.tar-2\n")
    resumed = make(config(data_root, again, *opts), ObservedCoOp)
    resumed.train()
    assert resumed.steps == full.steps
    torch.testing.assert_close(resumed.grad_norm_sum, full.grad_norm_sum, rtol=0, atol=0)
    torch.testing.assert_close(resumed.model.prompt_learner.ctx, full.model.prompt_learner.ctx, rtol=0, atol=0)


@pytest.mark.slow
def test_resume_restores_the_best_validation_result(data_root, tmp_path, monkeypatch):
    out = str(tmp_path / "best")
    opts = ("TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "2")
    first = make(config(data_root, out, *opts))
    first.train()
    best = first.best_result
    assert best > -float("inf")
    resumed = make(config(data_root, out, "TEST.FINAL_MODEL", "best_val", "OPTIM.MAX_EPOCH", "3"))
    scores = iter([best - 10.0])
    monkeypatch.setattr(resumed, "test", lambda split=None: next(scores) if split == "val" else 0.0)
    saved = os.path.getmtime(os.path.join(out, "prompt_learner", "model-best.pth.tar"))
    resumed.before_train()
    assert resumed.best_result == best
    resumed.epoch = 2
    resumed.after_epoch()  # a worse epoch after the resume must not replace model-best
    assert os.path.getmtime(os.path.join(out, "prompt_learner", "model-best.pth.tar")) == saved


def test_best_val_without_a_validation_set_is_an_error(data_root, tmp_path):
    trainer = make(config(data_root, str(tmp_path), "TEST.FINAL_MODEL", "best_val"))
    trainer.val_loader = None
    with pytest.raises(ValueError, match="TEST.FINAL_MODEL best_val .* has none"):
        trainer.check_model_selection()
    with pytest.raises(ValueError, match="validation set"):
        trainer.test(split="val")


def test_loss_terms_are_named_and_summed(data_root, tmp_path):
    trainer = make(config(data_root, str(tmp_path), "TRAINER.COOP.W", "8.0", flags=["--trainer", "KgCoOp"]))
    images = torch.randn(3, 3, 224, 224)
    labels = torch.tensor([0, 2, 1])
    output = trainer.loss_terms(Batch(images, labels, torch.zeros_like(labels)))
    assert list(output.losses) == ["ce", "kg"]
    torch.testing.assert_close(output.losses["ce"], F.cross_entropy(output.logits, labels))
    torch.testing.assert_close(output.loss, output.losses["ce"] + output.losses["kg"])


def test_loading_rule_requires_every_learned_tensor_and_drops_class_buffers(data_root, tmp_path):
    source_dir = str(tmp_path / "source")
    source = make(config(data_root, source_dir, "OPTIM.MAX_EPOCH", "1"))
    source.train()
    state = torch.load(os.path.join(source_dir, "prompt_learner", "model.pth.tar-1"), weights_only=True)

    # MODEL.INIT_WEIGHTS with the same class count: ctx comes over, the class-name buffers do not.
    doctored = dict(state, state_dict={**state["state_dict"],
                                       "token_prefix": torch.zeros_like(state["state_dict"]["token_prefix"])})
    path = str(tmp_path / "init.pth.tar")
    torch.save(doctored, path)
    target = make(config(data_root, str(tmp_path / "target"), "MODEL.INIT_WEIGHTS", path))
    torch.testing.assert_close(target.model.prompt_learner.ctx, state["state_dict"]["ctx"])
    assert target.model.prompt_learner.token_prefix.abs().sum() > 0

    # A file without the learned context is an error that names the key and the file.
    missing = dict(state, state_dict={k: v for k, v in state["state_dict"].items() if k != "ctx"})
    torch.save(missing, path)
    with pytest.raises(CheckpointMismatchError, match=r'init\.pth\.tar" lacks .* prompt_learner: ctx'):
        make(config(data_root, str(tmp_path / "bad"), "MODEL.INIT_WEIGHTS", path))


@pytest.mark.slow
def test_model_dir_while_training_starts_from_the_source_prompt(run_train, data_root, tmp_path):
    source = str(tmp_path / "source")
    opts = ["TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", "8", "OPTIM.MAX_EPOCH", "1"]
    common = TINY_COOP + ["--root", data_root, "--seed", "1"]
    assert run_train(*common, *opts, output_dir=source)[0] == 0
    code, log = run_train(*common, "--model-dir", source, "--load-epoch", "1", *opts,
                          "DATASET.SUBSAMPLE_CLASSES", "new", output_dir=str(tmp_path / "target"))
    assert code == 0 and f"Initialising the learned weights from {source}" in log
    assert f'Loading weights to prompt_learner from "{source}' in log


def test_amp_evaluation_encodes_the_text_cache_under_autocast(data_root, tmp_path):
    trainer = make(config(data_root, str(tmp_path), "TRAINER.COOP.PREC", "amp"))
    with torch.no_grad(), trainer.autocast():
        expected = trainer.model.class_text_features()
    trainer.begin_evaluation()
    try:
        assert trainer.model._text_cache.dtype == expected.dtype == torch.bfloat16
        torch.testing.assert_close(trainer.model._text_cache, expected)
    finally:
        trainer.end_evaluation()


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_the_same_command_continues_exactly(run_train, data_root, tmp_path,
                                                                                 monkeypatch):
    import re
    import signal

    args = TINY_COOP + ["--root", data_root, "--seed", "1", "TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", "8",
                        "OPTIM.MAX_EPOCH", "3", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAIN.PRINT_FREQ", "1"]

    def losses(log: str) -> List[float]:
        return [float(m) for m in re.findall(r" loss ([\d.]+) \(", log)]

    code, log_full = run_train(*args, output_dir=str(tmp_path / "full"))
    assert code == 0
    steps = []

    def terminate_at_step_7(self) -> None:
        steps.append(1)
        if len(steps) == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = str(tmp_path / "stopped")
    with monkeypatch.context() as patch:
        patch.setattr(CoOp, "after_step", terminate_at_step_7)
        code, log_stopped = run_train(*args, output_dir=stopped)
    assert code == 128 + signal.SIGTERM
    assert "Received SIGTERM" in log_stopped and "run the same command to continue" in log_stopped
    assert os.path.isfile(os.path.join(stopped, "prompt_learner", "model-stopped.pth.tar"))
    code, log_resumed = run_train(*args, output_dir=stopped)
    assert code == 0 and "after batch" in log_resumed
    done = losses(log_stopped)
    assert len(done) == 7 and done + losses(log_resumed) == losses(log_full)
    accuracy = re.compile(r"\* accuracy: ([\d.]+)%")
    assert accuracy.findall(log_resumed)[-1] == accuracy.findall(log_full)[-1]
