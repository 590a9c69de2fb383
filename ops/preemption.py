"""Preemption-safe training: SIGTERM and SIGUSR1 (what SLURM sends before it stops, preempts
or requeues a job) end a run at the next iteration with a resumable mid-epoch checkpoint.

The signal handler only records the signal; the training loop polls it between iterations
(every process of a torchrun job agrees through an all_reduce), rank 0 writes the checkpoint
(model, optimizer, scaler, epoch, iteration, the epoch's meter sums, RNG states) and every
process exits with PREEMPTED_EXIT. Running the same command again resumes at that iteration:
the sampler skips the batches done (its order depends only on (seed, epoch)) and every clip's
augmentation is drawn from RNGs seeded by (seed, epoch, index), so the resumed batches are the
ones the uninterrupted run would have drawn, with any number of DataLoader workers.
torchrun() (tools/torchrun.py) is torchrun forwarding SIGUSR1 too and ending in one line.

DataLoader workers: a cluster signals every process of the job, loader workers included, so the
workers ignore SIGTERM / SIGUSR1 but their parent's SIGTERM (ignore_stop_signals, their
worker_init_fn through ops.dataset.make_loader; the signals are blocked while they start,
stop_signals_blocked) and the main process alone handles the stop; a worker that dies while a
stop is pending ends the run as part of that stop (stop_pending), not as a crash.
"""
import contextlib
import os
import random
import signal
import threading

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

from ops.runtime import all_reduce_sum

# EX_TEMPFAIL of sysexits.h: a temporary stop, run the same command again (scripts/slurm_train.sh
# requeues the job on it)
PREEMPTED_EXIT = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_installed = []  # the StopSignals installed in this process


def stop_pending():
    """The name of the stop signal an installed StopSignals of this process recorded (None:
    none)."""
    return next((stop.received for stop in _installed if stop.received), None)


@contextlib.contextmanager
def stop_signals_blocked():
    """Hold SIGTERM / SIGUSR1 back from this thread, and from the processes it forks meanwhile
    (loader workers, until ignore_stop_signals): one that arrives is delivered on exit."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals():
    """In a loader worker: ignore the job's SIGTERM / SIGUSR1 (sent to every process of it; the
    main process handles the stop and ends the workers), but end on its parent's SIGTERM (the
    loader's shutdown), as torch's own handler does; SIGINT stays as it was.

    The signals stay blocked (as stop_signals_blocked left them) and a thread takes them with
    their sender, so this holds even while the worker's main thread is stuck in a decoder.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_take_stop_signals, args=(os.getppid(),), daemon=True,
                     name='stop-signals').start()


def _take_stop_signals(parent):
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)


class Preempted(SystemExit):
    """The run stopped on a signal after saving a resumable checkpoint (exit status 75, no
    traceback: the one log line was written before)."""

    def __init__(self):
        super().__init__(PREEMPTED_EXIT)


class StopSignals:
    """Records SIGTERM / SIGUSR1 instead of dying on them, between install() and uninstall()
    (which restores the previous handlers). Outside the main thread, where Python cannot
    install handlers, it records nothing."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.received = None
        self._previous = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._record)
            _installed.append(self)

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self in _installed:
            _installed.remove(self)

    def _record(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name

    def poll(self):
        """The name of the first stop signal any process received (None: none); a collective
        under torchrun, so every process must call it at the same point."""
        if not self.runtime.distributed:
            return self.received
        # each process votes for the signal it received; the first of STOP_SIGNALS voted wins
        mine = [0.0] * len(STOP_SIGNALS)
        if self.received is not None:
            mine[[s.name for s in STOP_SIGNALS].index(self.received)] = 1.0
        votes = all_reduce_sum(mine, self.runtime)
        for sig, count in zip(STOP_SIGNALS, votes):
            if count:
                return sig.name
        return None


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch can start after its first `skip` samples: a resumed
    epoch draws the rest of the order the interrupted one drew (it depends on (seed, epoch))."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def set_epoch(self, epoch, skip=0):
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return max(super().__len__() - self.skip, 0)


class SeededItems(Dataset):
    """`dataset` whose item `index` in epoch `epoch` is drawn with python's and numpy's global
    RNGs seeded from (seed, epoch, index); their states are restored after each item, so the
    training loop's own randomness does not depend on data loading either.

    Call set_epoch before iterating an epoch (the DataLoader's workers copy the dataset when
    an epoch's iteration starts).
    """

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed % 2 ** 64
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        words = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(4)
        saved = random.getstate(), np.random.get_state()
        random.seed(int.from_bytes(words.tobytes(), 'little'))
        np.random.seed(words)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
