"""The steps of the training run that main.py's train() reads top-down: the run's folders and
log (named first, made once every check has passed), the data, the model and optimiser, the
resume or fine-tune, the epochs (TrainingRun) with their checkpoints.

What a run reports always matches its files, whatever kills it (tests/test_fault_injection.py):
the best checkpoint is written before the latest one, so the latest never records a best
that is not on disk; the reported best top-1 is the one the best file holds (checked and
repaired on resume); weights or a validation loss that are not finite stop the run before
anything is saved; temporary files of a killed write are removed at the next start, under
the run-folder lock. A start that fails (bad input, a read-only root) leaves no run folder.
"""
import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch.utils.data import DistributedSampler, Sampler

from ops import models
from ops.checkpoint import (
    CheckpointError,
    check_finite,
    check_trained_settings,
    checkpoint_args,
    load_state_dict_checked,
    model_description,
    non_finite_entries,
    read_checkpoint,
    save_checkpoint,
    training_checkpoint,
)
from ops.dataset import TSNDataSet, WatchedLoader, load_checked_list, make_loader
from ops.dataset_config import get_dataset_config
from ops.engine import TrainingDiverged, TrainStep, train_one_epoch, validate
from ops.errors import UserError
from ops.files import remove_stale_temp_files, storage_error
from ops.logs import setup_logging
from ops.MASNet import set_form
from ops.meters import format_duration
from ops.optim import apply_lr, lr_at_epoch, mas_lr_falls_back
from ops.preemption import Preempted, ResumableSampler, SeededItems, StopSignals
from ops.run_folder import (
    LOCK_NAME,
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
    rng_state,
    set_seed,
    to_channels_last,
    wrap_model,
)
from ops.transforms import build_transform
from opts import recipe_flags

logger = logging.getLogger('masnet')

LATEST_NAME = 'ckpt.pth.tar'
BEST_NAME = 'ckpt.best.pth.tar'


# ---- folders and log ---------------------------------------------------------------------------

@dataclass
class RunPaths:
    """Where a run writes: its log folder (log.txt, args.json; tensorboardX/ beside it) and its
    checkpoint folder (the latest and the best checkpoint)."""
    log_dir: str
    ckpt_dir: str

    @property
    def latest(self):
        return os.path.join(self.ckpt_dir, LATEST_NAME)

    @property
    def best(self):
        return os.path.join(self.ckpt_dir, BEST_NAME)


def run_paths(args, runtime):
    """The run's folders, named from the flags (--store_name: from the settings when not given);
    nothing is created (open_run does, once every check passed). The log goes to the console,
    and is kept for log.txt."""
    if not args.store_name:
        args.store_name = default_store_name(args)
    setup_logging(None, runtime.is_main)
    return RunPaths(os.path.join(run_folder(args.root_log, args), 'log'),
                    os.path.join(run_folder(args.root_checkpoint, args), 'checkpoint'))


def lock_run(args, runtime):
    """Rank 0 makes and locks the run folder(s); every process stops with the same line if it
    cannot (another run holds one, a root that cannot be written)."""
    folders = sorted({run_folder(args.root_log, args), run_folder(args.root_checkpoint, args)})
    locks, error = [], None
    if runtime.is_main:
        try:
            for folder in folders:
                locks.append(lock_run_folder(folder))
        except (RunLockedError, OSError) as exc:
            error = exc if isinstance(exc, RunLockedError) else storage_error(exc, folder) or exc
            for handle in locks:
                handle.close()
    if runtime.distributed and all_reduce_sum([error is not None], runtime)[0] and error is None:
        error = RunLockedError(f"run folder '{folders[0]}' cannot be opened by rank 0")
    if error is not None:
        raise error
    return locks


def _new_folders(args):
    """The run folders that do not exist yet, then their ancestors that do not, deepest first."""
    runs = [os.path.abspath(run_folder(root, args)) for root in (args.root_log,
                                                                 args.root_checkpoint)]
    above = set()
    for folder in runs:
        folder = os.path.dirname(folder)
        while not os.path.exists(folder):
            above.add(folder)
            folder = os.path.dirname(folder)
    return ([f for f in dict.fromkeys(runs) if not os.path.exists(f)]
            + sorted(above, key=len, reverse=True))


def _remove_new_folders(new):
    """Undo a failed start: the new run folders with what is in them, then the new folders
    above them that are empty."""
    for folder in new:
        if os.path.isfile(os.path.join(folder, LOCK_NAME)):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only when empty


@contextlib.contextmanager
def open_run(args, paths, runtime):
    """Make and lock the run folders, log to their log.txt, remove the temporary files of a
    killed run and write args.json; the locks are released when the block ends. If one of
    these fails (a root that cannot be written, say), the folders it made are removed."""
    new = _new_folders(args) if runtime.is_main else []
    locks = []
    try:
        locks = lock_run(args, runtime)
        setup_logging(os.path.join(paths.log_dir, 'log.txt'), runtime.is_main)
        if runtime.is_main:
            stale = (remove_stale_temp_files(paths.ckpt_dir)
                     + remove_stale_temp_files(paths.log_dir))
            if stale:
                logger.info(f'removed {len(stale)} temporary file(s) of a killed run: '
                            f'{", ".join(stale)}')
            save_args(args, os.path.join(paths.log_dir, 'args.json'))
    except BaseException as exc:
        setup_logging(None, runtime.is_main)  # closes log.txt
        for handle in locks:
            handle.close()
        if not isinstance(exc, RunLockedError):  # a folder in use is another run's
            _remove_new_folders(new)
        raise
    try:
        yield
    finally:
        for handle in locks:
            handle.close()


# ---- data ----------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """The dataset's layout and its checked lists (train_records None with --evaluate)."""
    cfg: object
    train_records: Optional[list]
    val_records: list

    @property
    def train_list_id(self):
        """``{'count', 'sha256'}`` of the training list (its paths, frame counts, labels): a
        mid-epoch checkpoint records it, a resume compares it."""
        digest = hashlib.sha256()
        for record in self.train_records or ():
            digest.update(f'{record.path}\t{record.num_frames}\t{record.label}\n'.encode())
        return {'count': len(self.train_records or ()), 'sha256': digest.hexdigest()}


def read_data(args):
    """The dataset of --dataset and its training (unless --evaluate) and validation lists, read
    and checked (a missing training video is a warning, a missing validation one an error)."""
    cfg = get_dataset_config(args.dataset, args.dataset_path)
    train_records = None if args.evaluate else load_checked_list(
        cfg.train_list, cfg.root_path, cfg.num_class, cfg.image_tmpl, missing='warn',
        video_backend=args.video_backend)
    val_records = load_checked_list(cfg.val_list, cfg.root_path, cfg.num_class, cfg.image_tmpl,
                                    video_backend=args.video_backend)
    return TrainingData(cfg, train_records, val_records)


@dataclass
class Loaders:
    train: WatchedLoader
    val: WatchedLoader
    sampler: Sampler  # the train loader's (Resumable / MicroBatchSampler): set_epoch(epoch, skip)


class MicroBatchSampler(Sampler):
    """The training order of process `rank` of `num_replicas` whose optimiser steps are
    `accumulate` micro-batches of `micro_batch` clips (--accumulate): micro-batch i of step s
    holds the clips that process rank * accumulate + i of a torchrun run of num_replicas *
    accumulate processes (one micro-batch each) trains in its step s, i.e. its
    DistributedSampler shard for the same seed and epoch.

    Full steps only (the loader's drop_last), except a list smaller than one step, which keeps
    its one partial step. set_epoch(epoch, skip) as ResumableSampler: the epoch's order after
    its first `skip` clips (a multiple of the step's clips: resumes are at step boundaries).
    """

    def __init__(self, dataset, num_replicas, rank, seed, accumulate, micro_batch):
        self.shards = [DistributedSampler(dataset, num_replicas * accumulate,
                                          rank * accumulate + i, shuffle=True, seed=seed)
                       for i in range(accumulate)]
        self.micro_batch, self.skip = micro_batch, 0

    def set_epoch(self, epoch, skip=0):
        for shard in self.shards:
            shard.set_epoch(epoch)
        self.skip = skip

    def steps(self):
        """Full steps of the epoch (0: the list holds less than one step)."""
        return len(self.shards[0]) // self.micro_batch

    def order(self):
        shards = [list(shard) for shard in self.shards]  # of equal lengths (padded)
        if not self.steps():
            return [index for shard in shards for index in shard]
        m = self.micro_batch
        return [index for s in range(self.steps()) for shard in shards
                for index in shard[s * m:(s + 1) * m]]

    def __iter__(self):
        return iter(self.order()[self.skip:])

    def __len__(self):
        per_shard = self.steps() * self.micro_batch or len(self.shards[0])
        return max(per_shard * len(self.shards) - self.skip, 0)


def build_loaders(data, model, args, runtime):
    """Train loader (shuffled per epoch through a seeded sampler; micro-batches of
    --accumulate) and sharded val loader (batches of the micro-batch's size)."""
    cfg = data.cfg
    train_set = SeededItems(TSNDataSet(cfg.root_path, cfg.train_list, args.num_segments,
                                       cfg.image_tmpl,
                                       model.get_augmentation(flip=cfg.flip,
                                                              mirror_map=cfg.mirror_map),
                                       random_shift=True, dense_sample=args.dense_sample,
                                       video_list=data.train_records,
                                       video_backend=args.video_backend), args.seed)
    val_transform = build_transform('val', model.crop_size, model.scale_size, model.input_mean,
                                    model.input_std)
    val_set = TSNDataSet(cfg.root_path, cfg.val_list, args.num_segments, cfg.image_tmpl,
                         val_transform, random_shift=False, dense_sample=args.dense_sample,
                         video_list=data.val_records,
                         video_backend=args.video_backend)
    batch_size = process_batch_size(args, runtime) // args.accumulate
    if args.accumulate > 1:
        train_sampler = MicroBatchSampler(train_set, runtime.world_size, runtime.rank, args.seed,
                                          args.accumulate, batch_size)
        full_step, drop_last = train_sampler.steps() > 0, False  # it yields whole steps
    else:
        train_sampler = ResumableSampler(train_set, num_replicas=runtime.world_size,
                                         rank=runtime.rank, shuffle=True, seed=args.seed)
        full_step = drop_last = len(train_sampler) >= batch_size
    pin = runtime.device.type == 'cuda'
    # the release drops the last partial batch (floor(N / B) iterations); a list smaller than
    # one batch, where it would train on nothing, keeps its one partial batch here
    if not full_step and not args.evaluate:
        logger.warning(f'--batch-size {args.batch_size}: the training list holds only '
                       f'{len(train_set)} videos, one partial batch per epoch (the release '
                       f'drops it and trains nothing)')
    train_loader = make_loader(train_set, batch_size=batch_size, sampler=train_sampler,
                               workers=args.workers, pin_memory=pin, drop_last=drop_last,
                               timeout=args.loader_timeout)
    val_loader = make_loader(val_set, batch_size=batch_size,
                             sampler=ShardSampler(val_set, runtime.rank, runtime.world_size),
                             workers=args.workers, pin_memory=pin, timeout=args.loader_timeout)
    return Loaders(train_loader, val_loader, train_sampler)


def process_batch_size(args, runtime):
    """Clips per optimiser step of one process: --batch-size split over the processes."""
    return max(args.batch_size // runtime.world_size, 1)


# the effective batch of scripts/train.sh's recipes, by dataset and --num_segments
RECIPE_BATCHES = {(dataset, segments): batch
                  for dataset in ('somethingv1', 'somethingv2', 'kinetics')
                  for segments, batch in ((8, 32), (16, 16))}
RECIPE_GPUS = 4  # the recipes' DataParallel GPUs


def batch_layout(args, runtime):
    """How --batch-size splits over processes, --accumulate micro-batches and DataParallel
    GPUs, with the effective batch (clips per optimiser step over all processes) and the
    recipe's; refuses a per-process batch that --accumulate does not divide."""
    per_process = process_batch_size(args, runtime)
    if per_process % args.accumulate:
        raise UserError(f'--accumulate {args.accumulate}: --batch-size {args.batch_size} gives '
                        f'{per_process} clips per process ({runtime.world_size} process(es)), '
                        f'not a multiple of {args.accumulate}')
    micro = per_process // args.accumulate
    gpus = max(len(runtime.gpu_ids), 1)
    return {'processes': runtime.world_size, 'dataparallel_gpus': gpus,
            'accumulate': args.accumulate, 'micro_batch': micro,
            'per_device': math.ceil(micro / gpus), 'effective': per_process * runtime.world_size,
            'recipe': args.recipe_batch or RECIPE_BATCHES.get((args.dataset, args.num_segments)),
            'lr_given': args.lr}


def check_batch(args, runtime):
    """The run's batch layout, logged once and recorded in args (args.json and checkpoints
    hold it as 'batch_layout'). When the effective batch is not the recipe's, a warning gives
    the lr of the linear scaling rule; --scale_lr applies it to args.lr."""
    layout = batch_layout(args, runtime)
    effective, recipe = layout['effective'], layout['recipe']
    of_recipe = (f"; the recipe's {recipe} ({recipe / RECIPE_GPUS:g} per GPU on {RECIPE_GPUS} "
                 f"GPUs)" if recipe else '')
    logger.info(f"batch: {effective} clips per optimiser step = {layout['processes']} "
                f"process(es) x {layout['accumulate']} micro-batch(es) of {layout['micro_batch']} "
                f"clips, {layout['per_device']} per device{of_recipe}")
    if recipe and effective != recipe:
        scaled = args.lr * effective / recipe
        if args.scale_lr:
            logger.warning(f'--scale_lr: effective batch {effective}, the recipe\'s {recipe}: '
                           f'--lr {args.lr:g} x {effective}/{recipe} = {scaled:g} (linear '
                           f'scaling rule)')
            args.lr = scaled
        else:
            logger.warning(f'effective batch {effective} clips, not the recipe\'s {recipe} '
                           f'(--recipe_batch): the linear scaling rule gives --lr {scaled:g} '
                           f'(--lr {args.lr:g} x {effective}/{recipe}); --scale_lr applies it')
    args.batch_layout = layout
    return layout


# ---- model and optimiser ---------------------------------------------------------------------

def build_model(args, num_class):
    """The TemporalModel main.py trains for `args` (before any --resume / --tune_from);
    --pretrain imagenet fetches the weights when missing, unless --offline (or MASNET_OFFLINE)."""
    return models.build_model(num_class, args.num_segments, args.type, args.arch, args.pretrain,
                              offline=args.offline or None,
                              trust_checkpoint=args.trust_checkpoint, dropout=args.dropout,
                              partial_bn=args.partialbn, input_size=args.input_size)


def build_optimizer(args, model, runtime):
    """SGD over the model's parameter groups (the release's lr / decay multipliers), and the
    GradScaler of --amp (enabled on CUDA only)."""
    if mas_lr_falls_back(args.lr_type, args.lr_steps):
        logger.info(f'--lr_type MAS_lr with {len(args.lr_steps)} steps: x0.1 at each step '
                    f'(step_lr), as the release does')
    optimizer = torch.optim.SGD(model.get_optim_policies(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler('cuda', enabled=args.amp and runtime.device.type == 'cuda')
    return optimizer, scaler


# ---- resume or fine-tune ---------------------------------------------------------------------

@dataclass
class Start:
    """Where the epochs begin: the first epoch, the best top-1 so far, and how far the first
    epoch went ('progress' of a mid-epoch checkpoint, clips normalised; None: from its start)."""
    epoch: int = 0
    best_prec1: float = 0.0
    progress: Optional[dict] = None


def fine_tune(args, model):
    """A new run's start: --tune_from's weights loaded (new_fc re-initialised) when given."""
    if args.tune_from:
        tune = read_checkpoint(args.tune_from, trust=args.trust_checkpoint)
        check_finite(tune, args.tune_from)
        load_state_dict_checked(model, tune['state_dict'], source=f"checkpoint '{args.tune_from}'",
                                skip_prefixes=('new_fc.',))
        model.init_norms_from(tune['state_dict'])
        logger.info(f"fine-tuning from '{args.tune_from}' (new_fc re-initialised)")
    return Start(epoch=args.start_epoch)


def flag_differences(recorded, flags, marked=None):
    """Compare the flags a checkpoint recorded (its ``args``) with this command's.

    Returns ``(shaping, recipe, grown)`` lists of lines such as ``--lr 0.01 in the checkpoint,
    0.02 now``: differences of the flags opts.py marks shaping_flag, of those it marks
    recipe_flag, and a larger --epochs (allowed). marked: opts.recipe_flags() (the default).
    Flags the checkpoint does not record are not compared.
    """
    shaping, recipe, grown = [], [], []
    for key, (kind, spelling) in (marked or recipe_flags()).items():
        if key not in recorded or key not in flags or recorded[key] == flags[key]:
            continue
        line = f'{spelling} {recorded[key]} in the checkpoint, {flags[key]} now'
        if kind == 'shaping':
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
    shaping, recipe, _ = flag_differences(checkpoint_args(checkpoint), vars(args))
    if shaping:
        raise CheckpointError(f"checkpoint '{path}' was trained with other network-shaping flags "
                              f"({'; '.join(shaping)}): resuming never changes them; start a new "
                              f"--store_name, or fine-tune with --tune_from")
    if recipe and not (args.resume_changed or args.evaluate):
        raise CheckpointError(f"checkpoint '{path}' was trained with another recipe "
                              f"({'; '.join(recipe)}): pass --resume_changed to continue with "
                              f"the new flags, or another --store_name to start afresh")


def check_resume_hyperparameters(checkpoint, path, model, args):
    """Refuse to resume `checkpoint` when the code's module hyper-parameters (e.g. MAM.alpha)
    differ from those it records, unless --resume_changed (then a warning); --evaluate warns."""
    line = models.hyperparameter_line(checkpoint, model, path)
    if line and not (args.resume_changed or args.evaluate):
        raise CheckpointError(f"{line}: pass --resume_changed to continue with the code's "
                              f"values, or another --store_name to start afresh")
    if line:
        logger.warning(f"{line}: it runs with the code's values")


def find_resume(args, latest):
    """The checkpoint to resume from, read and checked against the flags (a Resume; None:
    start afresh)."""
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
        return None
    checkpoint = read_checkpoint(resume, trust=args.trust_checkpoint)
    check_resume_flags(checkpoint, resume, args)
    check_trained_settings(checkpoint, resume, num_segments=args.num_segments, arch=args.arch,
                           type=args.type, input_size=args.input_size)
    check_finite(checkpoint, resume, keys=('state_dict', 'optimizer', 'scaler'))
    return Resume(resume, checkpoint)


class Resume(NamedTuple):
    """A run continued from the checkpoint at `path` (found and checked by find_resume): its
    states loaded (load), the position in its epoch (epoch_progress), its best file checked and
    repaired (best_top1); check_diverged below keeps a diverged epoch out of the files."""
    path: str
    checkpoint: dict

    def load(self, model, optimizer, scaler, args, data, runtime):
        """Load the weights, optimiser and scaler states; returns the Start of the epochs."""
        checkpoint = self.checkpoint
        check_resume_hyperparameters(checkpoint, self.path, model, args)
        load_state_dict_checked(model, checkpoint['state_dict'],
                                source=f"checkpoint '{self.path}'")
        if 'optimizer' in checkpoint:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint.get('scaler') and scaler.is_enabled():
            scaler.load_state_dict(checkpoint['scaler'])
        model.initialised_norms.update(checkpoint.get('initialised_norms') or ())
        start = Start(int(checkpoint.get('epoch', 0)), float(checkpoint.get('best_prec1', 0.0)))
        if not args.evaluate:
            start.progress = self.epoch_progress(start.epoch, args, data, runtime)
        within = f" iteration {start.progress['iteration']}" if start.progress else ''
        logger.info(f"resumed '{self.path}' at epoch {start.epoch}{within} "
                    f"(best top-1 {start.best_prec1:.2f})")
        _, recipe, grown = flag_differences(checkpoint_args(checkpoint), vars(args))
        for line in grown:
            logger.info(f'training longer: {line}')
        for line in recipe:
            logger.warning(f'--resume_changed: {line}')
        return start

    def epoch_progress(self, epoch, args, data, runtime):
        """The checkpoint's mid-epoch 'progress' for this run (None: the epoch starts afresh).

        Its position is in clips (per process): a resume with another --batch-size continues
        at the same clip; one whose training list changed (count or hash) restarts the epoch.
        """
        progress = self.checkpoint.get('progress')
        if not progress:
            return None
        listed, now = progress.get('train_list'), data.train_list_id
        if listed and listed != now:
            logger.warning(f"the training list changed since '{self.path}' was saved mid-epoch "
                           f"({listed['count']} videos, sha256 {listed['sha256'][:12]} then; "
                           f"{now['count']}, {now['sha256'][:12]} now): epoch {epoch} restarts "
                           f"from its first clip")
            return None
        progress = dict(progress)
        world_then = progress.get('world_size') or 1
        batch_then = progress.get('batch_size') or checkpoint_args(self.checkpoint).get(
            'batch_size', args.batch_size)
        per_process_then = max(batch_then // world_then, 1)
        progress.setdefault('clips', progress['iteration'] * per_process_then)
        if world_then != runtime.world_size:
            logger.warning(f"'{self.path}' was saved mid-epoch by {world_then} process(es), not "
                           f"{runtime.world_size}: the rest of epoch {epoch} gets as many clips "
                           f"per process as the interrupted run had left, but other clips")
        accumulate_then = progress.get('accumulate') or 1
        if accumulate_then != args.accumulate:
            logger.warning(f"'{self.path}' was saved mid-epoch with --accumulate "
                           f"{accumulate_then}, not {args.accumulate}: the rest of epoch {epoch} "
                           f"gets as many clips, but other clips (micro-batches are other shards)")
        per_process_now = process_batch_size(args, runtime)
        if per_process_now != per_process_then:
            progress['iteration'] = progress['clips'] // per_process_now
            logger.info(f"--batch-size {args.batch_size}, the checkpoint's {batch_then}: epoch "
                        f"{epoch} continues at the clip it reached ({progress['clips']} per "
                        f"process), iteration {progress['iteration']} of the new batch")
        return progress

    def best_top1(self, best_path, runtime):
        """The best top-1 to continue from: the one the best file holds, repaired by rank 0
        (best_on_disk), the same on every process."""
        best_prec1 = best_on_disk(best_path, self.checkpoint) if runtime.is_main else 0.0
        return all_reduce_sum([best_prec1], runtime)[0]


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


# ---- epochs --------------------------------------------------------------------------------------

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


def report_partial_bn(model):
    """--partialbn: how many BatchNorms it freezes (a warning when none)."""
    frozen = len(model.partial_bn_norms())
    total = sum(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d))
                for m in model.base_model.modules())
    logger.info(f'--partialbn: {frozen} of {total} BatchNorms frozen (initialised ones but '
                f'the first); {total - frozen} train')
    if frozen == 0:
        logger.warning('--partialbn freezes nothing: no BatchNorm was initialised from '
                       'weights (--pretrain none and no --tune_from)')


class TrainingRun:
    """The epochs of a run and what they share: the network as it runs (--mas_form,
    --channels_last, DDP / DataParallel, --compile), the loaders, the TensorBoard writer, the
    best top-1 and the stop signals. main.py calls, per epoch, train_epoch, validate and save.
    """

    def __init__(self, args, runtime, paths, data, model, optimizer, scaler):
        self.args, self.runtime, self.paths = args, runtime, paths
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        logger.info(f'{data.cfg.name}: {data.cfg.num_class} classes; {args.type} {args.arch}, '
                    f'{args.num_segments} segments, {args.input_size}px; device '
                    f'{runtime.device}, {runtime.world_size} process(es)')
        if args.partialbn:
            report_partial_bn(model)
        set_form(args.mas_form, model)
        self.net = compile_model(wrap_model(to_channels_last(model, args.channels_last),
                                            runtime, args.sync_bn), args.compile)
        self.loaders = build_loaders(data, model, args, runtime)
        self.criterion = torch.nn.CrossEntropyLoss().to(runtime.device)
        self.step = TrainStep(self.net, self.criterion, optimizer, scaler, amp=args.amp,
                              clip_gradient=args.clip_gradient)
        self.description = model_description(model, data.cfg.categories, data.cfg.name,
                                             data.cfg.flip,
                                             data.cfg.mirror_map if data.cfg.flip else None)
        self.train_list_id = None if args.evaluate else data.train_list_id
        self.stop = StopSignals(runtime)
        self.writer, self.best_prec1, self.epoch = None, 0.0, None

    def evaluate(self):
        """--evaluate: one validation pass; returns its top-1."""
        loss, prec1, prec5 = validate(self.net, self.loaders.val, self.criterion, self.runtime)
        logger.info(f'Testing Results: Prec@1 {prec1:.3f} Prec@5 {prec5:.3f} Loss {loss:.5f}')
        cleanup(self.runtime)
        return prec1

    @contextlib.contextmanager
    def running(self, start, best_prec1):
        """Around the epochs from `start`: the TensorBoard writer, SIGTERM / SIGUSR1 recorded
        (a checkpoint, then exit 75), Ctrl-C's last line, the process group ended."""
        self.best_prec1, self.epoch = best_prec1, start.epoch
        if start.epoch >= self.args.epochs:
            logger.info(f'nothing to train: the checkpoint is at epoch {start.epoch}, '
                        f'--epochs is {self.args.epochs}')
        if self.runtime.is_main:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(log_dir=os.path.join(os.path.dirname(self.paths.log_dir),
                                                             'tensorboardX'))
            self.writer.flush()
        self.stop.install()
        self.started, self.start_epoch = time.time(), start.epoch
        try:
            yield
        except KeyboardInterrupt:
            logger.info(f'interrupted during epoch {self.epoch}; {self.paths.latest} '
                        f'holds the last complete epoch: run the same command to resume')
            raise
        finally:
            self.stop.uninstall()
            if self.writer:
                self.writer.close()
            cleanup(self.runtime)

    def set_lr(self, epoch):
        """Set the optimiser's lr for the fractional `epoch` (--lr_type, --warmup); returns it."""
        args = self.args
        lr = lr_at_epoch(args.lr_type, args.lr, epoch, args.lr_steps, args.epochs, args.warmup)
        apply_lr(self.optimizer, lr, args.weight_decay)
        return lr

    def train_epoch(self, epoch, progress=None):
        """Train `epoch` (from the clip `progress` says, when it is a resumed one)."""
        args, loaders = self.args, self.loaders
        self.epoch = epoch
        set_seed(args.seed + epoch)  # an epoch's randomness depends only on (seed, epoch)
        loaders.sampler.set_epoch(epoch, progress['clips'] if progress else 0)
        loaders.train.dataset.set_epoch(epoch)
        loss, prec1, prec5 = train_one_epoch(self.step, loaders.train, self.runtime, epoch,
                                             self.set_lr, args.print_freq, progress,
                                             self.between_iterations, args.accumulate)
        lr = lr_at_epoch(args.lr_type, args.lr, epoch, args.lr_steps, args.epochs, args.warmup)
        logger.info(f'Epoch {epoch} train: Loss {loss:.4f} Prec@1 {prec1:.3f} '
                    f'Prec@5 {prec5:.3f} lr {lr:.6f}')
        add_scalars(self.writer, epoch, {'loss/train': loss, 'acc/train_top1': prec1,
                                         'acc/train_top5': prec5, 'lr': lr})

    def between_iterations(self, done, clips, sums):
        """After each iteration: a mid-epoch checkpoint on a stop signal (then the run ends) or
        every --save_every_iters iterations."""
        every = self.args.save_every_iters
        signame = self.stop.poll()
        if not signame and not (every and done % every == 0):
            return
        totals = all_reduce_sum(sums, self.runtime)
        if self.runtime.is_main:
            # 'epoch' counts the complete epochs, as in every checkpoint; 'progress' says how
            # far the next one went (model, optimizer and RNGs are those after `done` iterations)
            progress = {'iteration': done, 'clips': clips, 'batch_size': self.args.batch_size,
                        'train_list': self.train_list_id, 'meters': totals,
                        'rng': rng_state(self.runtime.device),
                        'world_size': self.runtime.world_size,
                        'accumulate': self.args.accumulate}
            save_checkpoint(self.state(self.epoch, None, progress=progress), self.paths.latest)
        barrier(self.runtime)  # the other processes end once the checkpoint is on disk
        if signame:
            logger.info(f'{signame} at epoch {self.epoch} iteration {done}: saved '
                        f'{self.paths.latest}; rerun the same command to resume')
            raise Preempted()

    def validate(self, epoch):
        """Validate when --eval-freq (or the last epoch) says so; returns (top-1, loss), both
        None when not validated."""
        args = self.args
        if (epoch + 1) % args.eval_freq and epoch != args.epochs - 1:
            return None, None
        val_loss, prec1, prec5 = validate(self.net, self.loaders.val, self.criterion,
                                          self.runtime)
        best = max(prec1, self.best_prec1)
        logger.info(f'Epoch {epoch} val: Loss {val_loss:.5f} Prec@1 {prec1:.3f} '
                    f'Prec@5 {prec5:.3f} (best Prec@1 {best:.3f})')
        add_scalars(self.writer, epoch, {'loss/test': val_loss, 'acc/test_top1': prec1,
                                         'acc/test_top5': prec5, 'acc/test_top1_best': best})
        return prec1, val_loss

    def save(self, epoch, prec1, val_loss):
        """The end of `epoch`: stop if it diverged, else write the best checkpoint (when
        `prec1` is the best so far) and the latest; a stop signal then ends the run."""
        check_diverged(self.model, self.optimizer, val_loss, epoch, self.paths.latest)
        # the first validation always writes a best checkpoint, even at 0% top-1
        is_best = prec1 is not None and (prec1 > self.best_prec1
                                         or not os.path.isfile(self.paths.best))
        if prec1 is not None:
            self.best_prec1 = max(prec1, self.best_prec1)
        if self.runtime.is_main:
            state = self.state(epoch + 1, prec1)
            # best first: a kill between the two writes leaves the latest one epoch behind
            # (redone on resume), never a latest that records a best not on disk
            if is_best:
                save_checkpoint(state, self.paths.best)
            save_checkpoint(state, self.paths.latest)
            self.writer.flush()
        done, left = epoch + 1 - self.start_epoch, self.args.epochs - epoch - 1
        logger.info(f'Epoch {epoch} done; {done} epoch(s) in '
                    f'{run_eta(self.started, done, left)}')
        signame = self.stop.poll() if left else None
        if signame:  # it came during validation or the checkpoint writes
            logger.info(f'{signame} at the end of epoch {epoch}: saved {self.paths.latest}; '
                        f'rerun the same command to resume')
            raise Preempted()

    def state(self, epoch, prec1, **extra):
        """The checkpoint of the run after `epoch` complete epochs (ops.checkpoint)."""
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        return training_checkpoint(epoch, self.model, self.optimizer, vars(self.args), prec1,
                                   self.best_prec1, scaler, description=self.description,
                                   initialised_norms=sorted(self.model.initialised_norms),
                                   **extra)
