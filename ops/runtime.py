"""Where and how the model runs: devices and processes (CPU, one GPU, DataParallel (--gpus) or
torchrun (DDP)), the model moved and wrapped for them, --compile and --channels_last, the
collectives and the sharded sampler of a torchrun run; the run's randomness: seeds from
--seed, and the RNG states a mid-epoch checkpoint saves and restores.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) every process owns
one device (GPU ``LOCAL_RANK`` with nccl, or the CPU with gloo); otherwise one process uses
the CPU, one GPU, or several through DataParallel. A failed torchrun run is one line, from
rank 0 (one_line_failures).
"""
import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ops.errors import UserError

RELEASE_NUM_GPUS = 4


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    gpu_ids: tuple = ()  # DataParallel devices (single process)
    store: object = None  # the process group's key-value store (torchrun)
    timeout: float = 1800.0  # seconds a collective waits (torchrun)

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
        # kept to report a failure after the process group is gone (one_line_failures)
        store = dist.distributed_c10d._get_default_store()
        return Runtime(device, rank, world_size, store=store, timeout=timeout)
    if not torch.cuda.is_available():
        if gpus:
            print(f'warning: --gpus {" ".join(map(str, gpus))} given but no CUDA device is '
                  f'available: running on the CPU', file=sys.stderr)
        return Runtime(torch.device('cpu'))
    # the release's default --gpus 0 1 2 3, capped at the GPUs this machine has
    if gpus:
        gpu_ids = tuple(gpus)
    else:
        gpu_ids = tuple(range(min(RELEASE_NUM_GPUS, torch.cuda.device_count())))
    return Runtime(torch.device('cuda', gpu_ids[0]), gpu_ids=gpu_ids)


class SyncBatchNormUnavailable(UserError):
    """--sync_bn where SyncBatchNorm cannot run: one process, or CPU processes."""


def check_sync_bn(sync_bn, runtime):
    """Refuse --sync_bn outside a torchrun run on CUDA devices: with one process there is
    nothing to synchronise (DataParallel's replicas cannot), and SyncBatchNorm's forward
    needs CUDA tensors (torch 2.13 refuses CPU ones, also with gloo)."""
    if not sync_bn:
        return
    if not runtime.distributed:
        raise SyncBatchNormUnavailable('--sync_bn synchronises the processes of a torchrun run; '
                                       'this run has one process: run it under torchrun, or '
                                       'drop --sync_bn')
    if runtime.device.type != 'cuda':
        raise SyncBatchNormUnavailable('--sync_bn: SyncBatchNorm runs on CUDA devices only, this '
                                       'torchrun run uses the CPU (gloo): drop --sync_bn')


def wrap_model(model, runtime, sync_bn=False):
    """Move `model` to the runtime's device and wrap it for DDP / DataParallel; with `sync_bn`
    (a torchrun run, check_sync_bn) every BatchNorm, 2-D and 3-D, becomes a SyncBatchNorm
    first, in place (same parameter and buffer names: checkpoints do not change)."""
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
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


class PeerFailed(UserError):
    """Another process of a torchrun run failed or stopped responding."""


ERROR_KEY = 'masnet/error'
# what gloo and nccl errors of a collective whose peer died or hung say
COLLECTIVE_FAILURES = ('Connection closed by peer', 'Connection reset by peer', 'timed out',
                       'Timed out', 'Broken pipe', 'NCCL', 'gloo')


def _one_line(message):
    """The last line of an error re-raised from a DataLoader worker, else the message."""
    message = str(message).strip()
    if 'Original Traceback' in message:
        message = message.splitlines()[-1].split(': ', 1)[-1]
    return message


def _is_collective_failure(exc):
    return isinstance(exc, getattr(dist, 'DistError', ())) or (
        isinstance(exc, RuntimeError) and any(s in str(exc) for s in COLLECTIVE_FAILURES))


def _posted_error(store, wait=5.0):
    """The error message a peer posted in `store` within `wait` seconds (None: none)."""
    deadline = time.time() + wait
    with contextlib.suppress(Exception):
        while not store.check([ERROR_KEY]):
            if time.time() > deadline:
                return None
            time.sleep(0.1)
        return store.get(ERROR_KEY).decode()
    return None


@contextlib.contextmanager
def one_line_failures(runtime):
    """Under torchrun, a failed run is one line, printed by rank 0, naming its root cause.

    A process whose run fails with a UserError (a data error, say) posts its message in the
    process group's store; then it raises it on rank 0 and exits quietly (status 2) on the
    others. A process whose collective fails (a peer died or hung past --dist_timeout) exits
    quietly on ranks > 0; rank 0 raises PeerFailed with the message a peer posted, or, when
    none did within 5 seconds, the collective's error and --dist_timeout. Other errors (bugs)
    keep their traceback.
    """
    if not runtime.distributed:
        yield
        return
    try:
        yield
    except UserError as exc:
        with contextlib.suppress(Exception):
            runtime.store.set(ERROR_KEY, f'rank {runtime.rank}: {_one_line(exc)}')
        if runtime.is_main:
            raise
        raise SystemExit(2) from None
    except Exception as exc:
        if not _is_collective_failure(exc):
            raise
        if not runtime.is_main:
            raise SystemExit(2) from None
        posted = _posted_error(runtime.store)
        if posted:
            raise PeerFailed(posted) from None
        cause = _one_line(exc).splitlines()[0][:200]
        raise PeerFailed(f'rank 0: a collective operation failed ({cause}): another process '
                         f'died or stopped responding for {runtime.timeout:g} s '
                         f'(--dist_timeout); see its output') from None


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

def set_seed(seed):
    """Seed python, numpy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device):
    """The python, numpy and torch (CPU, and `device` when it is a GPU) RNG states, as plain
    Python values and tensors (a checkpoint holding them loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached_gaussian)),
             'torch': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    """Undo rng_state: the RNGs continue as they were when it was taken."""
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, cached_gaussian))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and state.get('cuda') is not None:
        torch.cuda.set_rng_state(state['cuda'], device)
