"""Train MAS-Net (or the TSM / TSN baselines): see `python main.py --help` and the README.

train() is the recipe, top-down; its steps live in ops/run_train.py (the epoch itself in
ops/engine.py)."""
import logging

from ops.cli import exit_on_user_error
from ops.run_train import (
    TrainingRun,
    build_model,
    build_optimizer,
    check_batch,
    find_resume,
    fine_tune,
    open_run,
    read_data,
    run_paths,
)
from ops.runtime import check_sync_bn, one_line_failures, set_seed, setup_runtime
from opts import parse_args

logger = logging.getLogger('masnet')


def train(args):
    """Train (with --evaluate only validate) as the flags say; returns the best val top-1.

    Everything that can fail on bad input (lists, weight files, the checkpoint to resume) is
    checked before open_run makes the run folder. Under torchrun a failure is one line, printed
    by rank 0 (one_line_failures).
    """
    runtime = setup_runtime(args.gpus, args.dist_timeout)
    with one_line_failures(runtime):
        set_seed(args.seed)
        paths = run_paths(args, runtime)            # folders and log: named, made by open_run
        check_batch(args, runtime)                  # logged; --scale_lr sets args.lr
        check_sync_bn(args.sync_bn, runtime)
        data = read_data(args)                      # the lists, read and checked
        model = build_model(args, data.cfg.num_class)
        optimizer, scaler = build_optimizer(args, model, runtime)
        resume = find_resume(args, paths.latest)    # None: a new run
        if resume:
            start = resume.load(model, optimizer, scaler, args, data, runtime)
        else:
            start = fine_tune(args, model)
        run = TrainingRun(args, runtime, paths, data, model, optimizer, scaler)
        with open_run(args, paths, runtime):
            if args.evaluate:
                return run.evaluate()
            best_prec1 = resume.best_top1(paths.best, runtime) if resume else start.best_prec1
            with run.running(start, best_prec1):
                for epoch in range(start.epoch, args.epochs):
                    run.train_epoch(epoch, start.progress if epoch == start.epoch else None)
                    prec1, val_loss = run.validate(epoch)
                    run.save(epoch, prec1, val_loss)
        logger.info(f'best Prec@1 {run.best_prec1:.3f}; checkpoints in {paths.ckpt_dir}')
        return run.best_prec1


@exit_on_user_error
def main(argv=None):
    return train(parse_args(argv))


if __name__ == '__main__':
    main()
