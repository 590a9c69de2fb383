"""The training run behind main.py: data, model, optimiser, resume, epochs, checkpoints, logs."""
import logging
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ops.checkpoint import load_model_weights, save_checkpoint
from ops.dataset import TSNDataSet
from ops.dataset_config import get_dataset_config
from ops.distributed import ShardSampler, cleanup, setup_runtime, wrap_model
from ops.engine import train_one_epoch, validate
from ops.experiment import default_store_name, run_folder, save_args, setup_logging
from ops.lr_schedule import apply_lr, lr_at_epoch, mas_lr_falls_back
from ops.models import TemporalModel
from ops.transforms import build_transform
from ops.utils import set_seed

logger = logging.getLogger('masnet')

LATEST_NAME = 'ckpt.pth.tar'
BEST_NAME = 'ckpt.best.pth.tar'


def build_loaders(cfg, model, args, runtime):
    """Train loader (shuffled per epoch through a seeded sampler) and sharded val loader."""
    train_set = TSNDataSet(cfg.root_path, cfg.train_list, args.num_segments, cfg.image_tmpl,
                           model.get_augmentation(flip=cfg.flip, mirror_map=cfg.mirror_map),
                           random_shift=True, dense_sample=args.dense_sample,
                           video_backend=args.video_backend)
    val_transform = build_transform('val', model.crop_size, model.scale_size, model.input_mean,
                                    model.input_std)
    val_set = TSNDataSet(cfg.root_path, cfg.val_list, args.num_segments, cfg.image_tmpl,
                         val_transform, random_shift=False, dense_sample=args.dense_sample,
                         video_backend=args.video_backend)
    batch_size = max(args.batch_size // runtime.world_size, 1)
    train_sampler = DistributedSampler(train_set, num_replicas=runtime.world_size, rank=runtime.rank,
                                       shuffle=True, seed=args.seed)
    pin = runtime.device.type == 'cuda'
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=train_sampler,
                              num_workers=args.workers, pin_memory=pin,
                              drop_last=len(train_sampler) > batch_size)
    val_loader = DataLoader(val_set, batch_size=batch_size,
                            sampler=ShardSampler(val_set, runtime.rank, runtime.world_size),
                            num_workers=args.workers, pin_memory=pin)
    return train_loader, val_loader, train_sampler


def build_model(args, num_class):
    """The TemporalModel main.py trains for `args` (before any --resume / --tune_from)."""
    return TemporalModel(num_class, args.num_segments, args.type, args.arch,
                         dropout=args.dropout, consensus_type=args.consensus_type,
                         partial_bn=args.partialbn, pretrain=args.pretrain,
                         input_size=args.input_size)


def add_scalars(writer, epoch, values):
    """Write {tag: value} to TensorBoard at `epoch` (no-op without a writer, i.e. off rank 0)."""
    if writer is not None:
        for tag, value in values.items():
            writer.add_scalar(tag, value, epoch)


def run(args):
    """Train (or with --evaluate only validate) as the flags say; returns the best val top-1."""
    runtime = setup_runtime(args.gpus)
    set_seed(args.seed)
    if not args.store_name:
        args.store_name = default_store_name(args)
    log_dir = os.path.join(run_folder(args.root_log, args), 'log')
    ckpt_dir = os.path.join(run_folder(args.root_checkpoint, args), 'checkpoint')
    setup_logging(os.path.join(log_dir, 'log.txt'), runtime.is_main)
    cfg = get_dataset_config(args.dataset, args.dataset_path)
    if runtime.is_main:
        save_args(args, os.path.join(log_dir, 'args.json'))
    logger.info(f'{cfg.name}: {cfg.num_class} classes; {args.type} {args.arch}, '
                f'{args.num_segments} segments, {args.input_size}px; device {runtime.device}, '
                f'{runtime.world_size} process(es)')

    model = build_model(args, cfg.num_class)
    if mas_lr_falls_back(args.lr_type, args.lr_steps):
        logger.info(f'--lr_type MAS_lr with {len(args.lr_steps)} steps: x0.1 at each step '
                    f'(step_lr), as the release does')
    optimizer = torch.optim.SGD(model.get_optim_policies(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    use_scaler = args.amp and runtime.device.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_scaler)
    start_epoch, best_prec1 = args.start_epoch, 0.0
    resume = args.resume
    latest = os.path.join(ckpt_dir, LATEST_NAME)
    if not (resume or args.tune_from) and os.path.isfile(latest):
        # the same command run again (e.g. a requeued job) continues the run it left;
        # with --evaluate it validates that run's latest checkpoint
        resume = latest
        logger.info(f"'{latest}' exists: resuming this run (another --store_name starts afresh)")
    if resume:
        checkpoint = load_model_weights(model, resume)
        if 'optimizer' in checkpoint:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if checkpoint.get('scaler') and use_scaler:
            scaler.load_state_dict(checkpoint['scaler'])
        model.initialised_norms.update(checkpoint.get('initialised_norms') or ())
        start_epoch = int(checkpoint.get('epoch', 0))
        best_prec1 = float(checkpoint.get('best_prec1', 0.0))
        logger.info(f"resumed '{resume}' at epoch {start_epoch} (best top-1 {best_prec1:.2f})")
    elif args.tune_from:
        checkpoint = load_model_weights(model, args.tune_from, skip_prefixes=('new_fc.',))
        model.init_norms_from(checkpoint['state_dict'])
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

    net = wrap_model(model, runtime)
    train_loader, val_loader, train_sampler = build_loaders(cfg, model, args, runtime)
    criterion = torch.nn.CrossEntropyLoss().to(runtime.device)

    if args.evaluate:
        loss, prec1, prec5 = validate(net, val_loader, criterion, runtime)
        logger.info(f'Testing Results: Prec@1 {prec1:.3f} Prec@5 {prec5:.3f} Loss {loss:.5f}')
        cleanup(runtime)
        return prec1

    writer = None
    if runtime.is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(log_dir=os.path.join(os.path.dirname(log_dir), 'tensorboardX'))
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, args.epochs):
            set_seed(args.seed + epoch)  # an epoch's randomness depends only on (seed, epoch)
            train_sampler.set_epoch(epoch)
            lr = lr_at_epoch(args.lr_type, args.lr, epoch, args.lr_steps, args.epochs,
                             args.warmup)
            apply_lr(optimizer, lr, args.weight_decay)
            loss, prec1, prec5 = train_one_epoch(net, train_loader, criterion, optimizer, scaler,
                                                 epoch, runtime, args, lr)
            logger.info(f'Epoch {epoch} train: Loss {loss:.4f} Prec@1 {prec1:.3f} '
                        f'Prec@5 {prec5:.3f} lr {lr:.6f}')
            add_scalars(writer, epoch, {'loss/train': loss, 'acc/train_top1': prec1,
                                        'acc/train_top5': prec5, 'lr': lr})

            is_best = False
            if (epoch + 1) % args.eval_freq == 0 or epoch == args.epochs - 1:
                loss, prec1, prec5 = validate(net, val_loader, criterion, runtime)
                # the first validation always writes a best checkpoint, even at 0% top-1
                is_best = prec1 > best_prec1 or not os.path.isfile(os.path.join(ckpt_dir, BEST_NAME))
                best_prec1 = max(prec1, best_prec1)
                logger.info(f'Epoch {epoch} val: Loss {loss:.5f} Prec@1 {prec1:.3f} '
                            f'Prec@5 {prec5:.3f} (best Prec@1 {best_prec1:.3f})')
                add_scalars(writer, epoch, {'loss/test': loss, 'acc/test_top1': prec1,
                                            'acc/test_top5': prec5, 'acc/test_top1_best': best_prec1})

            if runtime.is_main:
                state = {'epoch': epoch + 1, 'arch': args.arch, 'type': args.type,
                         'num_segments': args.num_segments, 'num_class': cfg.num_class,
                         'dataset': cfg.name, 'input_size': args.input_size,
                         'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict(),
                         'scaler': scaler.state_dict() if use_scaler else None,
                         'best_prec1': best_prec1, 'args': vars(args),
                         'initialised_norms': sorted(model.initialised_norms)}
                save_checkpoint(state, os.path.join(ckpt_dir, LATEST_NAME))
                if is_best:
                    save_checkpoint(state, os.path.join(ckpt_dir, BEST_NAME))
    except KeyboardInterrupt:
        logger.info(f'interrupted during epoch {epoch}; {os.path.join(ckpt_dir, LATEST_NAME)} '
                    f'holds the last complete epoch: run the same command to resume')
        raise
    finally:
        if writer:
            writer.close()
        cleanup(runtime)
    logger.info(f'best Prec@1 {best_prec1:.3f}; checkpoints in {ckpt_dir}')
    return best_prec1
