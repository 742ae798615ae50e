"""One run over several processes: 2 gloo ranks on the CPU train, evaluate and resume like one process."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import BatchSampler, SequentialSampler

from trainers.engine.distributed import ContiguousBlock, GlobalBatchSlice, average_gradients, weighted_mean
from trainers.engine.evaluator import Classification
from trainers.engine.trainer import TrainerX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# CoOp on the tiny CLIP; deterministic transforms, so the only randomness is the sampler's permutation.
RECIPE = ["--trainer", "CoOp", "--dataset-config-file", "configs/datasets/synthetic.yaml",
          "--config-file", "configs/trainers/CoOp/tiny_vit_b16_ep10.yaml", "--seed", "1",
          "TRAINER.COOP.N_CTX", "4", "DATASET.NUM_SHOTS", "4", "OPTIM.MAX_EPOCH", "2", "OPTIM.WARMUP_EPOCH", "0",
          "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAIN.PRINT_FREQ", "1", "INPUT.TRANSFORMS", "['normalize']",
          "TEST.SAVE_PREDICTIONS", "True"]


# ----- the pieces ---------------------------------------------------------------------------------------

def test_global_batch_slices_put_every_item_of_every_batch_on_exactly_one_rank():
    batches = [[7, 3, 5, 1, 0, 2, 9, 8], [4, 6, 10, 11, 12]]  # a full and an uneven partial batch
    slices = [list(GlobalBatchSlice(batches, rank, 2)) for rank in range(2)]
    assert [a + b for a, b in zip(*slices)] == batches
    assert [len(s) for s in slices[0]] == [4, 2] and [len(s) for s in slices[1]] == [4, 3]
    assert len(GlobalBatchSlice(batches, 1, 2)) == 2


def test_contiguous_evaluation_blocks_concatenate_to_the_loader_order():
    loader_order = BatchSampler(SequentialSampler(range(11)), batch_size=4, drop_last=False)
    blocks = [ContiguousBlock(loader_order, 4, rank, 3) for rank in range(3)]
    assert [i for block in blocks for batch in block for i in batch] == list(range(11))
    assert [len(block) for block in blocks] == [1, 1, 1] and [len(b) for b in blocks[2]] == [4]


def _average_in_process(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model, only_rank0, unused = nn.Linear(3, 2), nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(1))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    start, end = (0, 3) if rank == 0 else (3, 5)  # uneven slices of one global batch of 5
    loss = F.cross_entropy(model(x[start:end]), y[start:end])
    if rank == 0:
        (loss + only_rank0.sum()).backward()
    else:
        loss.backward()
    params = [*model.parameters(), only_rank0, unused]
    average_gradients(params, end - start)
    mean = weighted_mean({"loss": loss.item()}, end - start)
    torch.save({"grads": [p.grad for p in params], "loss": mean["loss"], "amp": _amp_steps(rank, x[start:end]),
                "evaluation": _evaluate_rows(range(3) if rank == 0 else range(3, 7), os.path.join(out, "eval"))},
               os.path.join(out, f"{rank}.pt"))
    dist.destroy_process_group()


def _evaluate_rows(rows: range, output_dir: str) -> Dict[str, float]:
    """A two-task evaluation of ``rows`` (one of them scored from logits) that writes predictions.csv."""
    evaluator = Classification(["a", "b"], [{0: "x", 1: "y"}, {0: "p", 1: "q", 2: "r"}],
                               metrics=["accuracy", "mean_per_class_accuracy"], output_dir=output_dir,
                               save_predictions=True)
    torch.manual_seed(1)
    tasks = torch.tensor([0, 1, 1, 0, 1, 1, 0])
    labels = torch.tensor([1, 2, 0, 0, 1, 2, 1])
    logits = [torch.randn(2 if t == 0 else 3) for t in tasks.tolist()]
    for i in rows:  # one batch per row
        evaluator.process([logits[i]], labels[i:i + 1], tasks=tasks[i:i + 1], impaths=[f"img{i}.jpg"])
    return dict(evaluator.evaluate())


def _amp_steps(rank: int, x: torch.Tensor) -> Dict[str, object]:
    """The engine's amp step when only rank 1's gradients overflow, then a finite step."""
    trainer = TrainerX.__new__(TrainerX)  # the step's parts only: no data or CLIP
    model = nn.Linear(3, 2)
    nn.init.ones_(model.weight)
    trainer._models, trainer._scheds = OrderedDict(m=model), OrderedDict(m=None)
    trainer._optims = OrderedDict(m=torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    before = model.weight.detach().clone()
    overflow = float("inf") if rank == 1 else 1.0
    trainer.model_zero_grad()
    trainer.model_backward(model(x).sum() * overflow, num_samples=len(x))
    trainer.model_update()
    skipped = torch.equal(model.weight, before)
    trainer.model_zero_grad()
    trainer.model_backward(model(x).mean(), num_samples=len(x))
    trainer.model_update()
    return {"skipped": skipped, "scale": trainer.scaler.get_scale(), "weight": model.weight.detach().clone()}


@pytest.mark.slow
def test_uneven_slices_average_to_the_full_batch_gradient_amp_steps_agree_and_evaluation_gathers(tmp_path):
    mp.spawn(_average_in_process, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        weight, bias, only_rank0, unused = got["grads"]
        assert torch.allclose(weight, model.weight.grad, atol=1e-6) and torch.allclose(bias, model.bias.grad, atol=1e-6)
        assert torch.allclose(only_rank0, torch.full((2,), 3 / 5))  # no gradient on rank 1 counts as zero there
        assert unused is None  # no gradient anywhere: the optimizer skips it, as in one process
        assert got["loss"] == pytest.approx(loss.item(), abs=1e-6)
        # amp: the overflow on rank 1 makes every rank skip that step and halve the scale.
        assert got["amp"]["skipped"] and got["amp"]["scale"] == 2.0
    ranks = [torch.load(tmp_path / f"{rank}.pt")["amp"]["weight"] for rank in range(2)]
    assert torch.equal(ranks[0], ranks[1]) and not torch.equal(ranks[0], torch.ones(2, 3))
    # Evaluation split 3 + 4 rows: every rank reports what one process reports, rank 0 writes the same file.
    single = _evaluate_rows(range(7), str(tmp_path / "eval_single"))
    assert [torch.load(tmp_path / f"{rank}.pt")["evaluation"] for rank in range(2)] == [single, single]
    assert open(tmp_path / "eval" / "predictions.csv").read() == \
        open(tmp_path / "eval_single" / "predictions.csv").read()


# ----- end to end: train.py under torchrun -------------------------------------------------------------

def torchrun(*args: str, script: Tuple[str, ...] = ("train.py",)) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2`` (a free port) from the repository root."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *script, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def single(*args: str) -> int:
    """``train.py`` in this process."""
    import train
    from trainers.engine.logger import close_logger

    try:
        return train.main(list(args))
    finally:
        close_logger()


def read_log(out: str) -> str:
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))
    return open(os.path.join(out, logs[-1])).read()


def losses(log: str) -> List[float]:
    return [float(m) for m in re.findall(r" loss ([\d.]+) \(", log)]


def accuracy(log: str) -> str:
    return re.findall(r"\* accuracy: ([\d.]+%)", log)[-1]


def assert_same_predictions(path_a: str, path_b: str) -> None:
    a, b = (list(csv.reader(open(p))) for p in (path_a, path_b))
    assert len(a) == len(b) > 1 and a[0] == b[0]
    for row_a, row_b in zip(a[1:], b[1:]):
        assert row_a[:3] == row_b[:3]  # image, label, prediction in the same order
        assert torch.allclose(torch.tensor([float(v) for v in row_a[3:]]), torch.tensor([float(v) for v in row_b[3:]]),
                              atol=1e-3)


@pytest.fixture(scope="module")
def runs(data_root, isolated_clip_cache, tmp_path_factory) -> Dict[str, str]:
    """The same training in one process and on 2 ranks (output folders by name)."""
    base = tmp_path_factory.mktemp("distributed")
    one, two = str(base / "one"), str(base / "two")
    assert single("--root", data_root, "--output-dir", one, *RECIPE) == 0
    done = torchrun("--root", data_root, "--output-dir", two, *RECIPE)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"one": one, "two": two, "base": str(base), "root": data_root}


@pytest.mark.slow
def test_two_ranks_train_like_one_process_with_the_same_global_batch(runs):
    log_one, log_two = read_log(runs["one"]), read_log(runs["two"])
    print("1 process: losses", losses(log_one), "accuracy", accuracy(log_one))
    print("2 ranks:   losses", losses(log_two), "accuracy", accuracy(log_two))
    assert len(losses(log_one)) == 10
    assert losses(log_two) == pytest.approx(losses(log_one), abs=2e-4)
    assert accuracy(log_two) == accuracy(log_one)
    assert "2 processes" in log_two
    assert_same_predictions(os.path.join(runs["one"], "predictions.csv"), os.path.join(runs["two"], "predictions.csv"))
    # Rank 0 alone wrote: one log, one checkpoint set, one results file; the lock is gone.
    assert sorted(os.listdir(runs["two"])) == sorted(os.listdir(runs["one"]))
    assert [f for f in os.listdir(runs["two"]) if f.startswith(("log.txt", "results"))] in (
        ["log.txt", "results.json"], ["results.json", "log.txt"])
    assert sorted(os.listdir(os.path.join(runs["two"], "prompt_learner"))) == ["checkpoint", "model.pth.tar-2"]


@pytest.mark.slow
def test_two_ranks_evaluate_to_the_same_predictions_as_one_process(runs):
    """``--eval-only`` of the one-process run's last checkpoint on 2 ranks; that run's own test of
    the same weights is the one-process reference (test_coop_e2e: eval-only reproduces it)."""
    evaluated = os.path.join(runs["base"], "eval_two")
    done = torchrun("--root", runs["root"], "--eval-only", "--model-dir", runs["one"], "--load-epoch", "2",
                    "--output-dir", evaluated, *RECIPE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert accuracy(read_log(evaluated)) == accuracy(read_log(runs["one"]))
    assert_same_predictions(os.path.join(runs["one"], "predictions.csv"), os.path.join(evaluated, "predictions.csv"))


@pytest.mark.slow
def test_a_stopped_two_rank_run_resumes_to_the_uninterrupted_result(runs):
    out = os.path.join(runs["base"], "stopped")
    args = ["--root", runs["root"], "--output-dir", out, *RECIPE]
    stopped = torchrun("7", *args, script=("tests/distributed_stop_script.py",))  # SIGTERM to rank 0 only
    assert stopped.returncode != 0
    log_stopped = read_log(out)
    assert "Received SIGTERM" in log_stopped and "run the same command to continue" in log_stopped
    assert os.path.isfile(os.path.join(out, "prompt_learner", "model-stopped.pth.tar"))
    resumed = torchrun(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log_resumed = read_log(out)
    assert "Continuing epoch 2 after batch 2" in log_resumed
    uninterrupted = read_log(runs["two"])
    assert losses(log_stopped) + losses(log_resumed) == losses(uninterrupted)
    assert accuracy(log_resumed) == accuracy(uninterrupted)


@pytest.mark.slow
def test_a_world_size_that_does_not_divide_the_batch_is_a_clear_error(data_root, tmp_path):
    out = str(tmp_path / "odd")
    done = torchrun("--root", data_root, "--output-dir", out, *RECIPE, "DATALOADER.TRAIN_X.BATCH_SIZE", "7")
    assert done.returncode != 0
    assert ("Error: DATALOADER.TRAIN_X.BATCH_SIZE 7 is the global batch and must split evenly across the 2 "
            "processes") in done.stderr
    assert "Traceback" not in read_log(out)
