"""One run over several processes (``torchrun``): process group, data slicing and reductions.

Every helper is a no-op in a single process, so the engine calls them unconditionally and a plain
``python train.py`` behaves exactly as without them (no process group is created).

The configured batch size stays the global batch. Every rank runs the same sampler from the same
random state (synchronised from rank 0 at each epoch's start), so all ranks draw the global batch a
single process would draw, and each keeps its slice (``GlobalBatchSlice``). Gradients are averaged
with each rank's weight = its slice size, which is the gradient of the mean loss over the global
batch even for a partial last batch. Evaluation gives each rank a contiguous block of the loader's
order (``ContiguousBlock``), so concatenating the ranks' rows in rank order is the loader's order.
Only rank 0 writes files; the other ranks' stdout is silenced.
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import os
import random
import sys
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from clip.errors import InvalidInputError
from trainers.engine.checkpoint import capture_rng_state, restore_rng_state

__all__ = ["init_from_env", "close", "is_distributed", "rank", "world_size", "is_main", "barrier",
           "rank0_first", "GlobalBatchSlice", "ContiguousBlock", "shard_loader", "check_divides",
           "sync_rng_state", "broadcast_parameters", "average_gradients", "weighted_mean", "all_true",
           "max_over_ranks", "all_gather_object"]


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(use_cuda: bool) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT); NCCL with one GPU per process (LOCAL_RANK) when ``use_cuda``,
    gloo on CPUs. Returns whether the run is distributed; a world of one creates no group."""
    if _env_world_size() <= 1 or is_distributed():
        return is_distributed()
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise InvalidInputError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                                    "GPU(s): start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # one console log (rank 0's); errors still reach stderr
    return True


def close() -> None:
    """Leave the process group (end of run)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes logs, checkpoints, caches and results."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def rank0_first() -> Iterator[None]:
    """Rank 0 runs the block first (writing caches: few-shot splits, listings, CLIP files), then
    the others run it and find the files there."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ----- data ------------------------------------------------------------------------------------------

def _slice_bounds(n: int, part: int, parts: int) -> "tuple[int, int]":
    """Part ``part`` of ``parts`` near-equal contiguous parts of ``range(n)``."""
    return part * n // parts, (part + 1) * n // parts


class GlobalBatchSlice(Sampler):
    """This rank's slice of every batch of ``batch_sampler`` (which every rank runs identically)."""

    def __init__(self, batch_sampler: Iterable[List[int]], rank: int, world_size: int) -> None:
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[List[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if len(batch) < self.world_size:
                raise InvalidInputError(f"A training batch of {len(batch)} item(s) cannot be split across "
                                        f"{self.world_size} processes: use fewer processes or more data")
            if i == 0:
                _decorrelate_rank(self.rank)  # the epoch's permutation is drawn; augment per rank from here
            start, end = _slice_bounds(len(batch), self.rank, self.world_size)
            yield batch[start:end]


class ContiguousBlock(Sampler):
    """This rank's contiguous block of the order ``batch_sampler`` gives, in batches of ``batch_size``
    (evaluation loaders are sequential, so every rank sees the same order)."""

    def __init__(self, batch_sampler: Iterable[List[int]], batch_size: int, rank: int, world_size: int) -> None:
        self.batch_sampler, self.batch_size, self.rank, self.world_size = batch_sampler, batch_size, rank, world_size

    def __len__(self) -> int:
        start, end = _slice_bounds(len(self.batch_sampler.sampler), self.rank, self.world_size)
        return -(-(end - start) // self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        order = [i for batch in self.batch_sampler for i in batch]
        start, end = _slice_bounds(len(order), self.rank, self.world_size)
        indices = order[start:end]
        for start in range(0, len(indices), self.batch_size):
            yield indices[start:start + self.batch_size]


def _decorrelate_rank(rank: int) -> None:
    """Ranks > 0 continue from a rank-specific torch seed, so their augmentations (drawn in this
    process when there are no loader workers) differ from rank 0's; rank 0 keeps its stream."""
    if rank > 0:
        torch.manual_seed(int(torch.randint(2 ** 62, ())) + rank)


def _seed_worker_for_rank(rank: int, worker_id: int) -> None:
    """Loader workers of ranks > 0 get seeds apart from rank 0's (same base seed on every rank)."""
    seed = (torch.initial_seed() + rank * 1_000_003) % 2 ** 63
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2 ** 32)
    except ImportError:
        pass


def check_divides(batch_size: int, key: str) -> None:
    """The global batch must split evenly across the processes (one clear error before anything runs)."""
    n = world_size()
    if batch_size % n:
        raise InvalidInputError(f"{key} {batch_size} is the global batch and must split evenly across the {n} "
                                f"processes, but {n} does not divide {batch_size}: choose a batch size that "
                                f"is a multiple of {n}, or another number of processes (torchrun --nproc_per_node)")


def shard_loader(loader: Optional[DataLoader], train: bool) -> Optional[DataLoader]:
    """The same loader over this rank's share: training batches sliced (``GlobalBatchSlice``),
    evaluation in contiguous blocks (``ContiguousBlock``). Unchanged in a single process."""
    if loader is None or not is_distributed():
        return loader
    if train:
        batch_sampler: Sampler = GlobalBatchSlice(loader.batch_sampler, rank(), world_size())
    else:
        batch_sampler = ContiguousBlock(loader.batch_sampler, loader.batch_size, rank(), world_size())
    workers = loader.num_workers
    return DataLoader(loader.dataset, batch_sampler=batch_sampler, num_workers=workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=functools.partial(_seed_worker_for_rank, rank()) if workers else None,
                      prefetch_factor=loader.prefetch_factor if workers else None,
                      persistent_workers=loader.persistent_workers)


def index_sampler(loader: DataLoader) -> Sampler:
    """The index sampler under a loader's batches, through ``shard_loader``'s wrapping."""
    batch_sampler = loader.batch_sampler
    return getattr(batch_sampler, "batch_sampler", batch_sampler).sampler


def sync_rng_state() -> None:
    """Every rank takes rank 0's random state (Python, NumPy, torch), so their samplers agree."""
    if not is_distributed():
        return
    state = [capture_rng_state() if is_main() else None]
    dist.broadcast_object_list(state, src=0)
    restore_rng_state(state[0])


# ----- reductions --------------------------------------------------------------------------------------

def broadcast_parameters(params: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values of ``params`` to every rank (learned tensors start equal)."""
    if not is_distributed():
        return
    device = _device()
    with torch.no_grad():
        for p in params:
            buffer = p.detach().to(device)
            dist.broadcast(buffer, src=0)
            p.copy_(buffer)


def average_gradients(params: Sequence[torch.Tensor], num_samples: int) -> None:
    """Replace each gradient by the mean over ranks weighted by their sample counts, in one reduction.

    A parameter without a gradient on some ranks counts as zero there; one without a gradient on
    every rank keeps none (the optimizer skips it, as in a single process).
    """
    if not is_distributed() or not params:
        return
    device = _device()
    grads = [p.grad.detach().float().reshape(-1) * num_samples if p.grad is not None
             else torch.zeros(p.numel(), device=p.device) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([g.to(device) for g in grads] + [has_grad, torch.tensor([float(num_samples)], device=device)])
    dist.all_reduce(flat)
    total = flat[-1]
    flags = flat[-1 - len(params):-1]
    offset = 0
    for p, present in zip(params, flags.tolist()):
        value = (flat[offset:offset + p.numel()] / total).view_as(p)
        offset += p.numel()
        if present == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(value)


def weighted_mean(values: Dict[str, float], num_samples: int) -> Dict[str, float]:
    """The mean of each value over ranks weighted by their sample counts (printed losses, accuracy)."""
    if not is_distributed():
        return values
    flat = torch.tensor([v * num_samples for v in values.values()] + [float(num_samples)],
                        dtype=torch.float64, device=_device())
    dist.all_reduce(flat)
    *sums, total = flat.tolist()
    return {key: value / total for key, value in zip(values, sums)}


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (so every rank takes the same branch)."""
    if not is_distributed():
        return flag
    value = torch.tensor([0.0 if flag else 1.0], device=_device())
    dist.all_reduce(value)
    return value.item() == 0


def max_over_ranks(value: int) -> int:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
