"""Run folders: where a training run writes, what it records there, and the lock it holds.

A training run writes to
``<root>/<dataset>/<type>/<arch>/num_segments_<T>/<store_name>/{log,tensorboardX,checkpoint}``
and holds ``<run folder>/run.lock`` (an fcntl lock, released by the kernel when the process
ends, even by kill -9) while it runs, so a second run on the same folder refuses to start.
"""
import contextlib
import fcntl
import json
import os
import socket
import time

from ops.errors import UserError
from ops.files import atomic_write, storage_error

LOCK_NAME = 'run.lock'


class RunLockedError(UserError):
    """The run folder is in use by another live process."""


def dataset_tag(dataset):
    """Folder name of a dataset (the stem of a .json dataset file)."""
    return os.path.splitext(os.path.basename(dataset))[0] if dataset.endswith('.json') else dataset


def default_store_name(args):
    return f'{args.lr_type}_lr{args.lr:g}_b{args.batch_size}_e{args.epochs}'


def run_folder(root, args):
    return os.path.join(root, dataset_tag(args.dataset), args.type, args.arch,
                        f'num_segments_{args.num_segments}', args.store_name)


def save_args(args, path):
    with atomic_write(path, 'w') as f:
        json.dump(vars(args), f, indent=2, sort_keys=True)


class LockBusy(Exception):
    """The lock of a file is held by another live process (``holder`` says which)."""

    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


def hold_lock(path):
    """Hold the fcntl lock of `path` (created if absent) until the returned file is closed
    (or the process ends); the file then names this process.

    Raises LockBusy naming the holder when another live process has it. A lock file left by
    a killed process does not block: the kernel released its lock with the process.
    """
    handle = open(path, 'a+')
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or 'unknown process'
        handle.close()
        raise LockBusy(holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on {socket.gethostname()} since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
        handle.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):  # closing retries the failed write
            handle.close()
        raise (storage_error(exc, path) or exc) from None
    return handle


def lock_run_folder(folder):
    """Hold `folder`'s run lock until the returned file is closed (or the process ends).

    Raises RunLockedError naming the holder when another live process has it.
    """
    os.makedirs(folder, exist_ok=True)
    try:
        return hold_lock(os.path.join(folder, LOCK_NAME))
    except LockBusy as busy:
        raise RunLockedError(f"run folder '{folder}' is in use by another run ({busy.holder}); "
                             f"wait for it to end or pass another --store_name") from None


