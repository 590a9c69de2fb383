"""The evaluation run behind test.py: checkpoints, multi-view loaders, scores and score files."""
import logging
import os

from torch.utils.data import DataLoader, Subset

from ops.analysis import write_error_analysis
from ops.checkpoint import read_checkpoint
from ops.dataset import TSNDataSet, load_checked_list
from ops.dataset_config import get_dataset_config
from ops.distributed import (ShardSampler, cleanup, compile_model, gather_shards, setup_runtime,
                             to_channels_last, wrap_model)
from ops.errors import FlagError
from ops.evaluation import (check_finite_scores, check_score_file_free, check_view_memory,
                            ensemble, evaluate_models, save_scores, score_filename, summarize)
from ops.experiment import dataset_tag, setup_logging
from ops.models import model_from_checkpoint
from ops.transforms import build_transform
from ops.utils import atomic_write, prepare_output

logger = logging.getLogger('masnet')


def split_per_model(text, cast, count, flag):
    """Per-checkpoint values of a comma-separated flag; a single value serves every checkpoint."""
    if text is None:
        return [None] * count
    try:
        values = [cast(v) for v in str(text).split(',') if v != '']
    except ValueError:
        raise FlagError(f'{flag}: cannot parse {text!r}') from None
    if cast is int and any(v < 1 for v in values):
        raise FlagError(f'{flag}: every value must be >= 1, got {text!r}')
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise FlagError(f'{flag}: {len(values)} values for {count} checkpoint(s)')
    return values


def evaluate_checkpoints(args):
    """Evaluate the checkpoints of ``args.weights`` as test.py's flags say.

    Under torchrun the videos are split over the processes (ShardSampler) and their scores
    gathered back in list order, so the numbers and files are those of one process; the first
    process logs and writes them.
    Returns (top-1, top-5, mean class accuracy) of the ensemble (of the model, if only one).
    """
    runtime = setup_runtime(args.gpus)
    if runtime.distributed:
        setup_logging(args.log_file, runtime.is_main)
    try:
        return _evaluate(args, runtime)
    finally:
        cleanup(runtime)


def _evaluate(args, runtime):
    if args.csv_file:
        prepare_output(args.csv_file, '--csv_file')
    cfg = get_dataset_config(args.dataset, args.dataset_path)
    weights = [w for w in args.weights.split(',') if w]
    segments = split_per_model(args.test_segments, int, len(weights), '--test_segments')
    coeffs = split_per_model(args.coeff, float, len(weights), '--coeff') if args.coeff else None
    num_clips = 2 if args.twice_sample else args.dense_sample_num if args.dense_sample else 1
    list_file = args.test_list or cfg.val_list
    records = load_checked_list(list_file, cfg.root_path, cfg.num_class, cfg.image_tmpl,
                                video_backend=args.video_backend)

    models, loaders, names = [], [], []
    for k, path in enumerate(weights):
        checkpoint = read_checkpoint(path, trust=args.trust_checkpoint)
        model = model_from_checkpoint(checkpoint, path, cfg.num_class, segments[k],
                                      args.type, args.arch, args.input_size, args.full_res)
        num_segments = segments[k] = model.num_segments
        check_view_memory(args.batch_size, args.test_crops, num_clips, num_segments,
                          model.crop_size, runtime.device)
        transform = build_transform('test', model.crop_size, model.scale_size, model.input_mean,
                                    model.input_std, num_crops=args.test_crops)
        dataset = TSNDataSet(cfg.root_path, list_file, num_segments, cfg.image_tmpl, transform,
                             random_shift=False, test_mode=True, dense_sample=args.dense_sample,
                             twice_sample=args.twice_sample, dense_sample_num=args.dense_sample_num,
                             video_list=records,
                             video_backend=args.video_backend)
        if args.max_num is not None:
            dataset = Subset(dataset, range(min(args.max_num, len(dataset))))
        loaders.append(DataLoader(dataset, batch_size=args.batch_size,
                                  sampler=ShardSampler(dataset, runtime.rank, runtime.world_size),
                                  num_workers=args.workers,
                                  pin_memory=runtime.device.type == 'cuda'))
        # no DDP wrapper in evaluation: each process scores its own videos
        to_channels_last(model, args.channels_last)
        models.append(compile_model((model.to(runtime.device) if runtime.distributed
                                     else wrap_model(model, runtime)).eval(), args.compile))
        names.append(score_filename(dataset_tag(args.dataset), model.temporal_type, model.arch,
                                    num_segments, args.test_crops, num_clips, model.crop_size))
        logger.info(f"{path}: {model.temporal_type} {model.arch}, {num_segments} segments, "
                    f"{args.test_crops} crop(s) x {num_clips} clip(s) of {model.crop_size}px")

    if args.save_scores:
        for path, name in zip(weights, names):
            check_score_file_free(os.path.join(args.save_scores, name), path, list_file,
                                  args.overwrite)
    scores, labels = evaluate_models(models, loaders, segments, runtime.device,
                                     use_softmax=args.softmax)
    scores = [gather_shards(s, runtime) for s in scores]
    labels = gather_shards(labels, runtime)
    base_set = loaders[0].dataset
    records = base_set.dataset.video_list if isinstance(base_set, Subset) else base_set.video_list
    video_ids = [r.path for r in records[:len(labels)]]
    for path, model_scores in zip(weights, scores):
        check_finite_scores(model_scores, path, video_ids)
    for path, name, model_scores, num_segments in zip(weights, names, scores, segments):
        top1, top5, mean_class = summarize(model_scores, labels)
        logger.info(f'{path}: Prec@1 {top1:.2f}  Prec@5 {top5:.2f}  mean class acc {mean_class:.2f}'
                    f'  ({len(labels)} videos)')
        if args.save_scores and runtime.is_main:
            out = os.path.join(args.save_scores, name)
            save_scores(out, model_scores, labels, video_ids, weights=path, list_file=list_file,
                        num_segments=num_segments, test_crops=args.test_crops, num_clips=num_clips)
            logger.info(f'scores written to {out}')
            analysis = write_error_analysis(out, model_scores, labels, video_ids, cfg.categories,
                                            scores_are_probabilities=args.softmax)
            logger.info(f"error analysis written to {os.path.dirname(analysis['confusion.npz'])}")
    final = ensemble(scores, coeffs) / len(scores)  # the release's mean of weighted scores
    if len(weights) > 1:
        top1, top5, mean_class = summarize(final, labels)
        logger.info(f'ensemble: Prec@1 {top1:.2f}  Prec@5 {top5:.2f}  mean class acc {mean_class:.2f}')
    if args.csv_file and runtime.is_main:
        with atomic_write(args.csv_file, 'w') as f:
            for video_id, pred in zip(video_ids, final.argmax(axis=1)):
                f.write(f'{video_id};{cfg.categories[pred]}\n')
        logger.info(f'predictions written to {args.csv_file}')
    return summarize(final, labels)
