"""The training run behind main.py: data, model, optimiser, resume, epochs, checkpoints, logs.

What a run reports always matches its files, whatever kills it (tests/test_fault_injection.py):
the best checkpoint is written before the latest one, so the latest never records a best
that is not on disk; the reported best top-1 is the one the best file holds (checked and
repaired on resume); weights or a validation loss that are not finite stop the run before
anything is saved; temporary files of a killed write are removed at the next start, under
the run-folder lock.
"""
import logging
import math
import os
import time

import torch

from ops.checkpoint import (
    CheckpointError,
    check_finite,
    check_trained_settings,
    load_state_dict_checked,
    model_description,
    non_finite_entries,
    read_checkpoint,
    save_checkpoint,
    training_checkpoint,
)
from ops.dataset import TSNDataSet, load_checked_list, make_loader
from ops.dataset_config import get_dataset_config
from ops.download import imagenet_weights
from ops.engine import TrainingDiverged, train_one_epoch, validate
from ops.files import remove_stale_temp_files
from ops.logs import setup_logging
from ops.lr_schedule import apply_lr, lr_at_epoch, mas_lr_falls_back
from ops.MASNet import set_form
from ops.meters import format_duration
from ops.models import TemporalModel
from ops.preemption import Preempted, ResumableSampler, SeededItems, StopSignals
from ops.run_folder import (
    RunLockedError,
    default_store_name,
    lock_run_folder,
    run_folder,
    save_args,
)
from ops.runtime import (
    ShardSampler,
    all_reduce_sum,
    barrier,
    cleanup,
    compile_model,
    one_line_failures,
    setup_runtime,
    to_channels_last,
    wrap_model,
)
from ops.seeding import rng_state, set_seed
from ops.transforms import build_transform

logger = logging.getLogger('masnet')

LATEST_NAME = 'ckpt.pth.tar'
BEST_NAME = 'ckpt.best.pth.tar'

# flags that shape the network or what it learns: a resume never changes them
SHAPING_FLAGS = ('dataset', 'type', 'arch', 'num_segments', 'input_size')
# the training recipe: a resume changes it only with --resume_changed (--epochs may grow)
RECIPE_FLAGS = ('lr', 'lr_type', 'lr_steps', 'epochs', 'warmup', 'momentum', 'weight_decay',
                'dropout', 'batch_size', 'clip_gradient', 'dense_sample', 'partialbn', 'amp',
                'seed')
# command-line spelling of the flags whose argparse dest differs
FLAG_SPELLING = {'batch_size': '--batch-size', 'clip_gradient': '--clip-gradient'}


def build_loaders(cfg, model, args, runtime, train_records, val_records):
    """Train loader (shuffled per epoch through a seeded sampler) and sharded val loader."""
    train_set = SeededItems(TSNDataSet(cfg.root_path, cfg.train_list, args.num_segments,
                                       cfg.image_tmpl,
                                       model.get_augmentation(flip=cfg.flip,
                                                              mirror_map=cfg.mirror_map),
                                       random_shift=True, dense_sample=args.dense_sample,
                                       video_list=train_records,
                                       video_backend=args.video_backend), args.seed)
    val_transform = build_transform('val', model.crop_size, model.scale_size, model.input_mean,
                                    model.input_std)
    val_set = TSNDataSet(cfg.root_path, cfg.val_list, args.num_segments, cfg.image_tmpl,
                         val_transform, random_shift=False, dense_sample=args.dense_sample,
                         video_list=val_records,
                         video_backend=args.video_backend)
    batch_size = max(args.batch_size // runtime.world_size, 1)
    train_sampler = ResumableSampler(train_set, num_replicas=runtime.world_size,
                                     rank=runtime.rank, shuffle=True, seed=args.seed)
    pin = runtime.device.type == 'cuda'
    # the release drops the last partial batch (floor(N / B) iterations); a list smaller than
    # one batch, where it would train on nothing, keeps its one partial batch here
    drop_last = len(train_sampler) >= batch_size
    if not drop_last and not args.evaluate:
        logger.warning(f'--batch-size {args.batch_size}: the training list holds only '
                       f'{len(train_set)} videos, one partial batch per epoch (the release '
                       f'drops it and trains nothing)')
    train_loader = make_loader(train_set, batch_size=batch_size, sampler=train_sampler,
                               workers=args.workers, pin_memory=pin, drop_last=drop_last,
                               timeout=args.loader_timeout)
    val_loader = make_loader(val_set, batch_size=batch_size,
                             sampler=ShardSampler(val_set, runtime.rank, runtime.world_size),
                             workers=args.workers, pin_memory=pin, timeout=args.loader_timeout)
    return train_loader, val_loader, train_sampler


def build_model(args, num_class):
    """The TemporalModel main.py trains for `args` (before any --resume / --tune_from);
    --pretrain imagenet fetches the weights when missing, unless --offline (or MASNET_OFFLINE)."""
    pretrain = args.pretrain
    if pretrain == 'imagenet':
        pretrain = imagenet_weights(args.arch, offline=args.offline or None)
    return TemporalModel(num_class, args.num_segments, args.type, args.arch,
                         dropout=args.dropout, partial_bn=args.partialbn, pretrain=pretrain,
                         input_size=args.input_size, trust_checkpoint=args.trust_checkpoint)


def run_eta(start, epochs_done, epochs_left):
    """``'H:MM:SS, ETA of the run H:MM:SS (N epochs left)'`` at the pace since `start`."""
    elapsed = time.time() - start
    eta = format_duration(elapsed / epochs_done * epochs_left)
    return (f'{format_duration(elapsed)}, ETA of the run {eta} '
            f'({epochs_left} epoch(s) left)')


def add_scalars(writer, epoch, values):
    """Write {tag: value} to TensorBoard at `epoch` (no-op without a writer, i.e. off rank 0)."""
    if writer is not None:
        for tag, value in values.items():
            writer.add_scalar(tag, value, epoch)


def flag_differences(recorded, flags):
    """Compare the flags a checkpoint recorded (its ``args``) with this command's.

    Returns ``(shaping, recipe, grown)`` lists of lines such as ``--lr 0.01 in the checkpoint,
    0.02 now``: differences of SHAPING_FLAGS, of RECIPE_FLAGS, and a larger --epochs (allowed).
    Flags the checkpoint does not record are not compared.
    """
    shaping, recipe, grown = [], [], []
    for key in SHAPING_FLAGS + RECIPE_FLAGS:
        if key not in recorded or key not in flags or recorded[key] == flags[key]:
            continue
        line = (f'{FLAG_SPELLING.get(key, "--" + key)} {recorded[key]} in the checkpoint, '
                f'{flags[key]} now')
        if key in SHAPING_FLAGS:
            shaping.append(line)
        elif key == 'epochs' and flags[key] > recorded[key]:
            grown.append(line)
        else:
            recipe.append(line)
    return shaping, recipe, grown


def check_resume_flags(checkpoint, path, args):
    """Refuse to resume `checkpoint` under other network-shaping flags (always) or another
    recipe (unless --resume_changed; --epochs may grow). Checkpoints that record no flags
    resume as they are; --evaluate compares only the network-shaping flags."""
    shaping, recipe, _ = flag_differences(checkpoint.get('args') or {}, vars(args))
    if shaping:
        raise CheckpointError(f"checkpoint '{path}' was trained with other network-shaping flags "
                              f"({'; '.join(shaping)}): resuming never changes them; start a new "
                              f"--store_name, or fine-tune with --tune_from")
    if recipe and not (args.resume_changed or args.evaluate):
        raise CheckpointError(f"checkpoint '{path}' was trained with another recipe "
                              f"({'; '.join(recipe)}): pass --resume_changed to continue with "
                              f"the new flags, or another --store_name to start afresh")


def find_resume(args, latest):
    """The checkpoint to resume from (None: start afresh), read and checked against the flags."""
    resume = args.resume
    if not (resume or args.tune_from) and os.path.isfile(latest):
        # the same command run again (e.g. a requeued job) continues the run it left;
        # with --evaluate it validates that run's latest checkpoint
        resume = latest
        logger.info(f"'{latest}' exists: resuming this run (another --store_name starts afresh)")
    if args.evaluate and not resume:
        raise CheckpointError(f"--evaluate: no checkpoint to validate ('{latest}' does not exist); "
                              f"pass --resume FILE")
    if not resume:
        return None, None
    checkpoint = read_checkpoint(resume, trust=args.trust_checkpoint)
    check_resume_flags(checkpoint, resume, args)
    check_trained_settings(checkpoint, resume, num_segments=args.num_segments, arch=args.arch,
                           type=args.type, input_size=args.input_size)
    check_finite(checkpoint, resume, keys=('state_dict', 'optimizer', 'scaler'))
    return resume, checkpoint


def lock_run(args, runtime):
    """Rank 0 locks the run folder(s); every process stops with the same line if it cannot."""
    folders = sorted({run_folder(args.root_log, args), run_folder(args.root_checkpoint, args)})
    locks, error = [], None
    if runtime.is_main:
        try:
            locks = [lock_run_folder(folder) for folder in folders]
        except RunLockedError as exc:
            error = exc
            for handle in locks:
                handle.close()
    if runtime.distributed and all_reduce_sum([error is not None], runtime)[0] and error is None:
        error = RunLockedError(f"run folder '{folders[0]}' is in use by another run")
    if error is not None:
        raise error
    return locks


def best_on_disk(best_path, latest_checkpoint):
    """The best top-1 the run may report: the one its best checkpoint holds.

    Repairs a best file that a kill left behind the latest checkpoint when the latest is
    itself the best model (it records its own top-1 as the best); otherwise the best file's
    value wins and the disagreement is logged.
    """
    recorded = float(latest_checkpoint.get('best_prec1', 0.0))
    best = None
    if os.path.isfile(best_path):
        try:
            best = read_checkpoint(best_path)
        except CheckpointError as exc:
            logger.warning(f'{exc}: it is rewritten at the next validation')
    if best is not None and non_finite_entries(best['state_dict']):
        logger.warning(f"'{best_path}' holds non-finite weights: it is rewritten at the next "
                       f"validation")
        best = None
    held = None if best is None else float(best.get('prec1', best.get('best_prec1', 0.0)))
    if held is not None and held >= recorded:
        return held
    if latest_checkpoint.get('prec1') is not None and latest_checkpoint['prec1'] == recorded:
        save_checkpoint(latest_checkpoint, best_path)
        logger.info(f"'{best_path}' lagged behind the latest checkpoint (a run killed between "
                    f"the two writes): repaired from the latest, best top-1 {recorded:.3f}")
        return recorded
    if held is None:
        logger.warning(f"'{best_path}' is missing: the best top-1 restarts from the next "
                       f"validation (the latest checkpoint recorded {recorded:.3f})")
        if best is None and os.path.isfile(best_path):
            os.remove(best_path)
        return 0.0
    logger.warning(f"the latest checkpoint records best top-1 {recorded:.3f} but '{best_path}' "
                   f"holds {held:.3f}: reporting what is on disk")
    return held


def check_diverged(model, optimizer, val_loss, epoch, latest):
    """Stop before saving an epoch whose weights, optimizer state or validation loss is not
    finite, naming the last good checkpoint."""
    bad = non_finite_entries(model.state_dict()) + non_finite_entries(
        optimizer.state_dict()['state'])
    if not bad and (val_loss is None or math.isfinite(val_loss)):
        return
    reason = (f'{len(bad)} non-finite tensor(s) [{", ".join(bad[:3])}]' if bad
              else f'the validation loss is {val_loss}')
    if os.path.isfile(latest):
        last = f"the last good checkpoint is '{latest}' (epoch {read_checkpoint(latest)['epoch']})"
    else:
        last = 'no checkpoint was written'
    raise TrainingDiverged(f'training diverged at epoch {epoch}: {reason}; nothing saved for '
                           f'this epoch, {last}: run again with a lower --lr or a --clip-gradient')


def train(args):
    """Train (or with --evaluate only validate) as the flags say; returns the best val top-1.
    Under torchrun a failure is one line, printed by rank 0 (one_line_failures)."""
    runtime = setup_runtime(args.gpus, args.dist_timeout)
    with one_line_failures(runtime):
        return _train(args, runtime)


def _train(args, runtime):
    set_seed(args.seed)
    if not args.store_name:
        args.store_name = default_store_name(args)
    log_dir = os.path.join(run_folder(args.root_log, args), 'log')
    ckpt_dir = os.path.join(run_folder(args.root_checkpoint, args), 'checkpoint')
    latest, best_path = os.path.join(ckpt_dir, LATEST_NAME), os.path.join(ckpt_dir, BEST_NAME)
    setup_logging(None, runtime.is_main)
    # everything that can fail on bad input is checked before the run folder is created
    cfg = get_dataset_config(args.dataset, args.dataset_path)
    train_records = None if args.evaluate else load_checked_list(
        cfg.train_list, cfg.root_path, cfg.num_class, cfg.image_tmpl, missing='warn',
        video_backend=args.video_backend)
    val_records = load_checked_list(cfg.val_list, cfg.root_path, cfg.num_class, cfg.image_tmpl,
                                    video_backend=args.video_backend)
    resume, checkpoint = find_resume(args, latest)
    # weight files too: --pretrain (fetched if need be) and --tune_from are read and checked here
    model = build_model(args, cfg.num_class)
    tune = read_tune_from(args) if args.tune_from and not resume else None

    locks = lock_run(args, runtime)
    try:
        return _run_locked(args, runtime, cfg=cfg, model=model, train_records=train_records,
                           val_records=val_records, resume=resume, checkpoint=checkpoint,
                           tune=tune, log_dir=log_dir, ckpt_dir=ckpt_dir, latest=latest,
                           best_path=best_path)
    finally:
        for handle in locks:
            handle.close()


def read_tune_from(args):
    """The --tune_from checkpoint, read and checked (finite weights)."""
    tune = read_checkpoint(args.tune_from, trust=args.trust_checkpoint)
    check_finite(tune, args.tune_from)
    return tune


def _run_locked(args, runtime, *, cfg, model, train_records, val_records, resume, checkpoint,
                tune, log_dir, ckpt_dir, latest, best_path):
    """The run once its folders are locked: log file, optimiser, resume / fine-tune, then
    --evaluate's validation or the epochs; returns the best val top-1.

    cfg: the dataset; model: the TemporalModel before any checkpoint is loaded;
    train_records / val_records: the checked lists (train_records None with --evaluate);
    resume / checkpoint: the path and content of the checkpoint to resume (None, None: a new
    run); tune: the --tune_from checkpoint (None: none or resuming); log_dir / ckpt_dir: the run
    folder's log and checkpoint folders; latest / best_path: the two checkpoint files.
    """
    setup_logging(os.path.join(log_dir, 'log.txt'), runtime.is_main)
    if runtime.is_main:
        stale = remove_stale_temp_files(ckpt_dir) + remove_stale_temp_files(log_dir)
        if stale:
            logger.info(f'removed {len(stale)} temporary file(s) of a killed run: '
                        f'{", ".join(stale)}')
        save_args(args, os.path.join(log_dir, 'args.json'))
    logger.info(f'{cfg.name}: {cfg.num_class} classes; {args.type} {args.arch}, '
                f'{args.num_segments} segments, {args.input_size}px; device {runtime.device}, '
                f'{runtime.world_size} process(es)')

    if mas_lr_falls_back(args.lr_type, args.lr_steps):
        logger.info(f'--lr_type MAS_lr with {len(args.lr_steps)} steps: x0.1 at each step '
                    f'(step_lr), as the release does')
    optimizer = torch.optim.SGD(model.get_optim_policies(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    use_scaler = args.amp and runtime.device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_scaler)
    start_epoch, best_prec1, progress_state = args.start_epoch, 0.0, None
    if resume:
        load_state_dict_checked(model, checkpoint['state_dict'], source=f"checkpoint '{resume}'")
        if 'optimizer' in checkpoint:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint.get('scaler') and use_scaler:
            scaler.load_state_dict(checkpoint['scaler'])
        model.initialised_norms.update(checkpoint.get('initialised_norms') or ())
        start_epoch = int(checkpoint.get('epoch', 0))
        best_prec1 = float(checkpoint.get('best_prec1', 0.0))
        if runtime.is_main and not args.evaluate:
            best_prec1 = best_on_disk(best_path, checkpoint)
        best_prec1 = all_reduce_sum([best_prec1 if runtime.is_main else 0.0], runtime)[0]
        progress_state = checkpoint.get('progress')
        within = f" iteration {progress_state['iteration']}" if progress_state else ''
        if progress_state and progress_state.get('world_size') != runtime.world_size:
            logger.warning(f"'{resume}' was saved mid-epoch by {progress_state.get('world_size')} "
                           f"process(es), not {runtime.world_size}: the rest of epoch "
                           f"{start_epoch} gets as many batches as the interrupted run had left, "
                           f"but other clips")
        logger.info(f"resumed '{resume}' at epoch {start_epoch}{within} "
                    f"(best top-1 {best_prec1:.2f})")
        _, recipe, grown = flag_differences(checkpoint.get('args') or {}, vars(args))
        for line in grown:
            logger.info(f'training longer: {line}')
        for line in recipe:
            logger.warning(f'--resume_changed: {line}')
    elif tune is not None:
        load_state_dict_checked(model, tune['state_dict'], source=f"checkpoint '{args.tune_from}'",
                                skip_prefixes=('new_fc.',))
        model.init_norms_from(tune['state_dict'])
        logger.info(f"fine-tuning from '{args.tune_from}' (new_fc re-initialised)")
    if args.partialbn:
        frozen = len(model.partial_bn_norms())
        total = sum(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d))
                    for m in model.base_model.modules())
        logger.info(f'--partialbn: {frozen} of {total} BatchNorms frozen (initialised ones but '
                    f'the first); {total - frozen} train')
        if frozen == 0:
            logger.warning('--partialbn freezes nothing: no BatchNorm was initialised from '
                           'weights (--pretrain none and no --tune_from)')

    set_form(args.mas_form, model)
    net = compile_model(wrap_model(to_channels_last(model, args.channels_last), runtime),
                        args.compile)
    train_loader, val_loader, train_sampler = build_loaders(cfg, model, args, runtime,
                                                            train_records, val_records)
    criterion = torch.nn.CrossEntropyLoss().to(runtime.device)

    if args.evaluate:
        loss, prec1, prec5 = validate(net, val_loader, criterion, runtime)
        logger.info(f'Testing Results: Prec@1 {prec1:.3f} Prec@5 {prec5:.3f} Loss {loss:.5f}')
        cleanup(runtime)
        return prec1
    if start_epoch >= args.epochs:
        logger.info(f'nothing to train: the checkpoint is at epoch {start_epoch}, '
                    f'--epochs is {args.epochs}')

    description = model_description(model, cfg.categories, cfg.name, cfg.flip,
                                    cfg.mirror_map if cfg.flip else None)
    writer = None
    if runtime.is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(log_dir=os.path.join(os.path.dirname(log_dir), 'tensorboardX'))
        writer.flush()
    stop = StopSignals(runtime)

    def after_iteration(done, sums):
        """Between iterations: a mid-epoch checkpoint on a stop signal (then the run ends) or
        every --save_every_iters iterations."""
        signame = stop.poll()
        if not signame and not (args.save_every_iters and done % args.save_every_iters == 0):
            return
        totals = all_reduce_sum(sums, runtime)
        if runtime.is_main:
            # 'epoch' counts the complete epochs, as in every checkpoint; 'progress' says how
            # far the next one went (model, optimizer and RNGs are those after `done` iterations)
            state = training_checkpoint(
                epoch, model, optimizer, vars(args), None, best_prec1,
                scaler.state_dict() if use_scaler else None, description=description,
                initialised_norms=sorted(model.initialised_norms),
                progress={'iteration': done, 'meters': totals,
                          'rng': rng_state(runtime.device), 'world_size': runtime.world_size})
            save_checkpoint(state, latest)
        barrier(runtime)  # the other processes end once the checkpoint is on disk
        if signame:
            logger.info(f'{signame} at epoch {epoch} iteration {done}: saved {latest}; '
                        f'rerun the same command to resume')
            raise Preempted()

    epoch = start_epoch
    stop.install()
    run_start = time.time()
    try:
        for epoch in range(start_epoch, args.epochs):
            set_seed(args.seed + epoch)  # an epoch's randomness depends only on (seed, epoch)
            resuming = progress_state if epoch == start_epoch else None
            train_sampler.set_epoch(
                epoch, resuming['iteration'] * train_loader.batch_size if resuming else 0)
            train_loader.dataset.set_epoch(epoch)
            lr = lr_at_epoch(args.lr_type, args.lr, epoch, args.lr_steps, args.epochs,
                             args.warmup)
            apply_lr(optimizer, lr, args.weight_decay)
            loss, prec1, prec5 = train_one_epoch(net, train_loader, criterion, optimizer, scaler,
                                                 epoch, runtime, lr, amp=args.amp,
                                                 clip_gradient=args.clip_gradient,
                                                 print_freq=args.print_freq,
                                                 progress_state=resuming,
                                                 after_iteration=after_iteration)
            logger.info(f'Epoch {epoch} train: Loss {loss:.4f} Prec@1 {prec1:.3f} '
                        f'Prec@5 {prec5:.3f} lr {lr:.6f}')
            add_scalars(writer, epoch, {'loss/train': loss, 'acc/train_top1': prec1,
                                        'acc/train_top5': prec5, 'lr': lr})

            is_best, val_loss, prec1 = False, None, None
            if (epoch + 1) % args.eval_freq == 0 or epoch == args.epochs - 1:
                val_loss, prec1, prec5 = validate(net, val_loader, criterion, runtime)
                # the first validation always writes a best checkpoint, even at 0% top-1
                is_best = prec1 > best_prec1 or not os.path.isfile(best_path)
                best_prec1 = max(prec1, best_prec1)
                logger.info(f'Epoch {epoch} val: Loss {val_loss:.5f} Prec@1 {prec1:.3f} '
                            f'Prec@5 {prec5:.3f} (best Prec@1 {best_prec1:.3f})')
                add_scalars(writer, epoch, {'loss/test': val_loss, 'acc/test_top1': prec1,
                                            'acc/test_top5': prec5,
                                            'acc/test_top1_best': best_prec1})
            check_diverged(model, optimizer, val_loss, epoch, latest)

            if runtime.is_main:
                state = training_checkpoint(
                    epoch + 1, model, optimizer, vars(args), prec1, best_prec1,
                    scaler.state_dict() if use_scaler else None, description=description,
                    initialised_norms=sorted(model.initialised_norms))
                # best first: a kill between the two writes leaves the latest one epoch behind
                # (redone on resume), never a latest that records a best not on disk
                if is_best:
                    save_checkpoint(state, best_path)
                save_checkpoint(state, latest)
                writer.flush()
            logger.info(f'Epoch {epoch} done; {epoch + 1 - start_epoch} epoch(s) in '
                        f'{run_eta(run_start, epoch + 1 - start_epoch, args.epochs - epoch - 1)}')
            signame = stop.poll() if epoch + 1 < args.epochs else None
            if signame:  # it came during validation or the checkpoint writes
                logger.info(f'{signame} at the end of epoch {epoch}: saved {latest}; rerun the '
                            f'same command to resume')
                raise Preempted()
    except KeyboardInterrupt:
        logger.info(f'interrupted during epoch {epoch}; {latest} '
                    f'holds the last complete epoch: run the same command to resume')
        raise
    finally:
        stop.uninstall()
        if writer:
            writer.close()
        cleanup(runtime)
    logger.info(f'best Prec@1 {best_prec1:.3f}; checkpoints in {ckpt_dir}')
    return best_prec1
