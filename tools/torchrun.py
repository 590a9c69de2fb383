"""torchrun that ends with one line, not a traceback, when it is stopped by SIGTERM / SIGUSR1
(a cluster's preemption or time limit) or a worker fails; SIGUSR1 reaches the workers too.

    python tools/torchrun.py --nproc_per_node 4 main.py --dataset somethingv1 ...

Takes torchrun's flags. Exit status 75 when stopped by SIGTERM or SIGUSR1 (the training saved
a checkpoint: run the same command again), 0 on success, 1 when a worker failed.
"""
import sys

from ops.preemption import torchrun

if __name__ == '__main__':
    sys.exit(torchrun(sys.argv[1:]))
