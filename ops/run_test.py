"""The evaluation run behind test.py: checkpoints, multi-view loaders, scores and score files.

A score file records the settings of its evaluation (model_settings): test.py replaces it
only with the scores of the same checkpoint, list and settings (or --overwrite), and holds
its lock from that check to the write.
"""
import contextlib
import logging
import os

from torch.utils.data import Subset

from ops.analysis import write_error_analysis
from ops.checkpoint import checkpoint_categories, read_checkpoint
from ops.dataset import TSNDataSet, clips_per_video, load_checked_list, make_loader
from ops.dataset_config import get_dataset_config
from ops.errors import FlagError
from ops.evaluation import check_finite_scores, check_view_memory, evaluate_models
from ops.files import atomic_write, prepare_output
from ops.logs import setup_logging
from ops.MASNet import set_form
from ops.models import model_from_checkpoint
from ops.predictions import ranked_prediction, write_submission
from ops.run_folder import dataset_tag
from ops.runtime import (
    ShardSampler,
    all_reduce_sum,
    cleanup,
    compile_model,
    gather_shards,
    one_line_failures,
    setup_runtime,
    to_channels_last,
    wrap_model,
)
from ops.scores import (
    ScoreFileError,
    check_score_file_free,
    describe_labels,
    ensemble,
    lock_score_file,
    save_scores,
    score_filename,
    softmax,
    summarize,
)
from ops.transforms import build_transform

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


def model_settings(args, model, num_class, num_clips):
    """What a score file of `model` depends on besides its checkpoint and list (all recorded
    in the file; a rerun with another value may not replace it)."""
    sampling = 'dense' if args.dense_sample else 'twice' if args.twice_sample else 'uniform'
    return dict(dataset=dataset_tag(args.dataset), num_class=num_class,
                temporal_type=model.temporal_type, arch=model.arch,
                num_segments=model.num_segments, test_crops=args.test_crops, num_clips=num_clips,
                sampling=sampling,
                dense_sample_num=args.dense_sample_num if args.dense_sample else 0,
                full_res=args.full_res, input_size=model.crop_size, scale_size=model.scale_size,
                softmax=args.softmax, max_num=-1 if args.max_num is None else args.max_num)


def evaluate_checkpoints(args):
    """Evaluate the checkpoints of ``args.weights`` as test.py's flags say.

    Under torchrun the videos are split over the processes (ShardSampler) and their scores
    gathered back in list order, so the numbers and files are those of one process; the first
    process logs and writes them; a process's input error is one line, printed by the first
    (ops.runtime.one_line_failures).
    Returns (top-1, top-5, mean class accuracy) of the ensemble (of the model, if only one)
    over the labelled videos; None for an unlabelled list (label -1: predictions only).
    """
    runtime = setup_runtime(args.gpus)
    if runtime.distributed:
        setup_logging(args.log_file, runtime.is_main)
    try:
        with one_line_failures(runtime):
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
    num_clips = clips_per_video(args.twice_sample, args.dense_sample, args.dense_sample_num)
    list_file = args.test_list or cfg.val_list
    records = load_checked_list(list_file, cfg.root_path, cfg.num_class, cfg.image_tmpl,
                                video_backend=args.video_backend, allow_unlabelled=True)
    if args.submission and cfg.num_class < 5:
        raise FlagError(f'--submission writes the top 5 classes; {args.dataset} has '
                        f'{cfg.num_class}')

    models, loaders, names, settings = [], [], [], []
    for k, path in enumerate(weights):
        checkpoint = read_checkpoint(path, trust=args.trust_checkpoint)
        # the dataset's class names must be those the checkpoint was trained on (if it says)
        checkpoint_categories(checkpoint, path, cfg.categories, f'--dataset {args.dataset}')
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
        loaders.append(make_loader(dataset, batch_size=args.batch_size,
                                   sampler=ShardSampler(dataset, runtime.rank, runtime.world_size),
                                   workers=args.workers, timeout=args.loader_timeout,
                                   pin_memory=runtime.device.type == 'cuda'))
        # no DDP wrapper in evaluation: each process scores its own videos
        to_channels_last(set_form(args.mas_form, model), args.channels_last)
        models.append(compile_model((model.to(runtime.device) if runtime.distributed
                                     else wrap_model(model, runtime)).eval(), args.compile))
        names.append(score_filename(dataset_tag(args.dataset), model.temporal_type, model.arch,
                                    num_segments, args.test_crops, num_clips, model.crop_size))
        settings.append(model_settings(args, model, cfg.num_class, num_clips))
        logger.info(f"{path}: {model.temporal_type} {model.arch}, {num_segments} segments, "
                    f"{args.test_crops} crop(s) x {num_clips} clip(s) of {model.crop_size}px")

    if args.save_scores and len(set(names)) < len(names):
        name = next(n for n in names if names.count(n) > 1)
        twins = [w for w, n in zip(weights, names) if n == name]
        raise FlagError(f"--weights {', '.join(twins)} would write one score file '{name}' (same "
                        f"model, frames, views and size): evaluate them one at a time, or pass "
                        f"--save_scores ''")
    with contextlib.ExitStack() as locks:
        if args.save_scores:
            for path, name, setting in zip(weights, names, settings):
                out = os.path.join(args.save_scores, name)
                busy = None
                if runtime.is_main:  # the process that writes
                    try:
                        locks.enter_context(lock_score_file(out))
                    except ScoreFileError as exc:
                        busy = exc
                # every process stops when the writer cannot lock (none waits for it)
                if all_reduce_sum([busy is not None], runtime)[0]:
                    raise busy or ScoreFileError(f"score file '{out}' is being written by "
                                                 f"another test.py")
                check_score_file_free(out, path, list_file, args.overwrite, **setting)
        return _score(args, cfg, runtime, weights, names, settings, list_file, models, loaders,
                      segments, coeffs)


def _score(args, cfg, runtime, weights, names, settings, list_file, models, loaders, segments,
           coeffs):
    """Evaluate, log, write the score files and predictions (under the score files' locks)."""
    scores, labels = evaluate_models(models, loaders, segments, runtime.device,
                                     use_softmax=args.softmax)
    scores = [gather_shards(s, runtime) for s in scores]
    labels = gather_shards(labels, runtime)
    base_set = loaders[0].dataset
    records = base_set.dataset.video_list if isinstance(base_set, Subset) else base_set.video_list
    video_ids = [r.path for r in records[:len(labels)]]
    for path, model_scores in zip(weights, scores):
        check_finite_scores(model_scores, path, video_ids)
    note = describe_labels(labels)
    if note:
        logger.info(note)
    for path, name, model_scores, setting in zip(weights, names, scores, settings):
        result = summarize(model_scores, labels)
        if result is not None:
            top1, top5, mean_class = result
            logger.info(f'{path}: Prec@1 {top1:.2f}  Prec@5 {top5:.2f}  mean class acc '
                        f'{mean_class:.2f}  ({len(labels)} videos)')
        if args.save_scores and runtime.is_main:
            out = os.path.join(args.save_scores, name)
            save_scores(out, model_scores, labels, video_ids, weights=path, list_file=list_file,
                        categories=cfg.categories, **setting)
            logger.info(f'scores written to {out}')
            if result is not None:
                analysis = write_error_analysis(out, model_scores, labels, video_ids,
                                                cfg.categories,
                                                scores_are_probabilities=args.softmax)
                logger.info(f"error analysis written to "
                            f"{os.path.dirname(analysis['confusion.npz'])}")
    final = ensemble(scores, coeffs) / len(scores)  # the release's mean of weighted scores
    result = summarize(final, labels)
    if len(weights) > 1 and result is not None:
        top1, top5, mean_class = result
        logger.info(f'ensemble: Prec@1 {top1:.2f}  Prec@5 {top5:.2f}  '
                    f'mean class acc {mean_class:.2f}')
    if args.csv_file and runtime.is_main:
        with atomic_write(args.csv_file, 'w') as f:
            for video_id, pred in zip(video_ids, final.argmax(axis=1)):
                f.write(f'{video_id};{cfg.categories[pred]}\n')
        logger.info(f'predictions written to {args.csv_file}')
    if args.submission and runtime.is_main:
        probabilities = final if args.softmax else softmax(final)
        write_submission(args.submission, [
            ranked_prediction(video_id, row, cfg.categories, 5, int(label))
            for video_id, row, label in zip(video_ids, probabilities, labels)])
        logger.info(f'submission written to {args.submission}')
    return result
