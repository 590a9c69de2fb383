"""Devices and processes: CPU, one GPU, DataParallel (--gpus) or torchrun (DDP).

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process owns
one device (GPU ``LOCAL_RANK`` with nccl, or the CPU with gloo); otherwise one process uses
the CPU, one GPU, or several through DataParallel.
"""
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

RELEASE_NUM_GPUS = 4


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    gpu_ids: tuple = ()  # DataParallel devices (single process)

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def setup_runtime(gpus=None, timeout=1800):
    """Pick the device(s) and, under torchrun, join the process group, whose collectives give
    up after `timeout` seconds (a process that stopped responding)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size > 1:
        rank = int(os.environ['RANK'])
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if torch.cuda.is_available():
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
            backend = 'nccl'
        else:
            device = torch.device('cpu')
            backend = 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
        return Runtime(device, rank, world_size)
    if not torch.cuda.is_available():
        if gpus:
            print(f'warning: --gpus {" ".join(map(str, gpus))} given but no CUDA device is '
                  f'available: running on the CPU', file=sys.stderr)
        return Runtime(torch.device('cpu'))
    # the release's default --gpus 0 1 2 3, capped at the GPUs this machine has
    gpu_ids = tuple(gpus) if gpus else tuple(range(min(RELEASE_NUM_GPUS, torch.cuda.device_count())))
    return Runtime(torch.device('cuda', gpu_ids[0]), gpu_ids=gpu_ids)


def wrap_model(model, runtime):
    """Move `model` to the runtime's device and wrap it for DDP / DataParallel."""
    model = model.to(runtime.device)
    if runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == 'cuda' else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if len(runtime.gpu_ids) > 1:
        return torch.nn.DataParallel(model, device_ids=list(runtime.gpu_ids))
    return model


def compile_model(model, enabled=True):
    """``torch.compile(model)`` for --compile. Graphs that cannot be compiled (no C++ compiler,
    an unsupported op) run eagerly with a warning instead of failing the run; compiling happens
    in the first batches of each mode (train / eval)."""
    if not enabled:
        return model
    if not hasattr(torch, 'compile'):
        print('warning: --compile: this PyTorch has no torch.compile; running eagerly',
              file=sys.stderr)
        return model
    from torch import _dynamo
    _dynamo.config.suppress_errors = True
    return torch.compile(model)


def to_channels_last(model, enabled=True):
    """--channels_last: the Conv2d weights of ``model`` in NHWC memory, in place; returns it.
    Call it before wrapping the model (DataParallel, DDP, torch.compile).

    Convolutions then run, and write their outputs, channels-last (oneDNN and cuDNN follow the
    weight's format), and MAS-Net's blocks keep that layout (ops/mas_fused.py). TIM's Conv1d
    and MSM's Conv3d weights keep theirs: a 4-D format does not apply to them.
    """
    for module in model.modules() if enabled else ():
        if isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)
    return model


def all_reduce_sum(values, runtime):
    """Sum a list of numbers over all processes (identity in a single process)."""
    if not runtime.distributed:
        return list(values)
    device = runtime.device if runtime.device.type == 'cuda' else torch.device('cpu')
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(runtime):
    if runtime.distributed:
        dist.barrier()


def cleanup(runtime):
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_shards(array, runtime):
    """Undo a ShardSampler split: the per-process arrays of items r, r + W, ... interleaved
    back into dataset order on every process (the array itself in a single process)."""
    if not runtime.distributed:
        return array
    shards = [None] * runtime.world_size
    dist.all_gather_object(shards, np.asarray(array))
    total = sum(len(s) for s in shards)
    merged = np.empty((total,) + shards[0].shape[1:], dtype=shards[0].dtype)
    for rank, shard in enumerate(shards):
        merged[rank::runtime.world_size] = shard
    return merged


class ShardSampler(Sampler):
    """Deterministic split of a dataset over processes without padding or duplicates.

    Process r gets items r, r + W, r + 2W, ...; summed counts are exactly those of one process.
    """

    def __init__(self, dataset, rank=0, world_size=1):
        self.indices = list(range(rank, len(dataset), world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
