"""torchrun that ends with one line, not a traceback, when it is stopped by SIGTERM / SIGUSR1
(a cluster's preemption or time limit) or a worker fails; SIGUSR1 reaches the workers too.

    python tools/torchrun.py --nproc_per_node 4 main.py --dataset somethingv1 ...

Takes torchrun's flags. Exit status 75 when stopped by SIGTERM or SIGUSR1 (the training saved
a checkpoint: run the same command again), 0 on success, 1 when a worker failed.
"""
import os
import signal
import sys

from ops.preemption import PREEMPTED_EXIT, STOP_SIGNALS


def torchrun(argv=None):
    """torch.distributed.run (torchrun) with `argv`, ending with one line instead of a
    traceback when it is stopped by a signal or a worker fails; returns the exit status.

    SIGUSR1 (SLURM's --signal) is forwarded to the workers like SIGTERM, so a training run
    saves a mid-epoch checkpoint on either; torchrun then waits up to 100 s (not 30) for the
    workers before it kills them. Stopped by SIGTERM or SIGUSR1 it returns 75
    (PREEMPTED_EXIT: run the same command again), by another signal 128 + its
    number; a failed worker: 75 if it stopped on a signal itself, else 1.
    """
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as run_main

    # the defaults of torchrun's --signals_to_handle and --shutdown_timeout (flags win)
    os.environ.setdefault('PET_SIGNALS_TO_HANDLE', 'SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1')
    os.environ.setdefault('PET_SHUTDOWN_TIMEOUT', '100')
    try:
        run_main(argv)
    except SignalException as exc:
        sig = signal.Signals(exc.sigval)
        print(f'torchrun: {sig.name}: workers stopped (a training run saves a checkpoint '
              f'first, see its log); run the same command again to resume', file=sys.stderr)
        return PREEMPTED_EXIT if sig in STOP_SIGNALS else 128 + int(sig)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f'torchrun: worker rank {rank} failed first (exit status {failure.exitcode}; the '
              f'error is above)', file=sys.stderr)
        return PREEMPTED_EXIT if failure.exitcode == PREEMPTED_EXIT else 1
    return 0

if __name__ == '__main__':
    sys.exit(torchrun(sys.argv[1:]))
