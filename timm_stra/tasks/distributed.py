"""One process or many under ``torchrun``: setup, reductions, sharing the up-front image check, and gathering
results in dataset order.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; the process
group uses NCCL on GPUs and gloo on CPUs. Only rank 0 writes files.
"""
import argparse
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from .data.check_share import CheckShare


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: its rank among ``world_size`` and its device."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def task_device(text: str) -> str:
    """An ``argparse`` type for ``--device``: 'cpu', or 'cuda' / 'cuda:N' where PyTorch sees that GPU (under
    ``torchrun``, 'cuda': each rank takes its own)."""
    kind, _, index = text.partition(':')
    if kind not in ('cpu', 'cuda') or (kind == 'cpu' and index) or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f'{text!r}: choose cpu, cuda or cuda:N (under torchrun, cuda: each rank takes '
                                         'the GPU of its LOCAL_RANK)')
    if kind == 'cuda' and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f'{text}: PyTorch sees no CUDA device here; use --device cpu')
    if index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f'{text}: PyTorch sees {torch.cuda.device_count()} CUDA devices here')
    return text


def init_distributed(device: Optional[str] = None) -> DistEnv:
    """Join the process group if launched by ``torchrun`` (``WORLD_SIZE`` > 1); pick the device.

    Args:
        device: 'cpu', 'cuda' or None (CUDA when available). Each rank uses ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    kind = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(kind, local_rank) if kind == 'cuda' else torch.device(kind)
    if kind == 'cuda':
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if kind == 'cuda' else 'gloo')
    return DistEnv(rank, world_size, local_rank, dev)


def shutdown(env: DistEnv, barrier: bool = True) -> None:
    """Leave the process group, after a final barrier unless this rank is failing (the others may never come)."""
    if env.distributed and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over ranks (returns a copy; identity on one process)."""
    values = values.detach().clone().to(env.device)
    if env.distributed:
        dist.all_reduce(values)
    return values


def broadcast_buffers(module: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, so after the last training step every
    rank holds rank 0's statistics updated by its own last batch: evaluation needs them equal.
    """
    if env.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, 0)


def all_gather_objects(obj: Any, env: DistEnv) -> List[Any]:
    """Every rank's ``obj`` (picklable, e.g. CPU tensors), in rank order."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def check_share(env: DistEnv) -> CheckShare:
    """This rank's part in decoding a data set's images up front: every world_size-th image, findings gathered."""
    return CheckShare(env.rank, env.world_size, partial(all_gather_objects, env=env))


def gather_in_order(indices: torch.Tensor, values: Optional[torch.Tensor], env: DistEnv) -> torch.Tensor:
    """Rows computed by all ranks for a sharded dataset, put back in dataset order.

    Args:
        indices: (n_r,) dataset indices this rank computed.
        values: (n_r, ...) their results, or None when this rank computed none.

    Returns:
        (N, ...) on every rank, row i for dataset index i.
    """
    parts = all_gather_objects((indices.cpu(), None if values is None else values.cpu()), env)
    parts = [p for p in parts if p[1] is not None]  # ranks without any row send None
    idx = torch.cat([p[0] for p in parts])
    vals = torch.cat([p[1] for p in parts])
    out = torch.empty_like(vals)
    out[idx] = vals
    if len(torch.unique(idx)) != len(out):
        raise RuntimeError('ranks computed overlapping shards')
    return out
