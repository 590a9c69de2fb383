"""The evaluation run behind test.py: checkpoints, multi-view loaders, scores and score files.

A score file records the settings of its evaluation (model_settings: the model's, and every
field of the view protocol, ops.dataset.ViewProtocol, the frame order too): test.py replaces
it only with the scores of the same checkpoint, list and settings (or --overwrite), and holds
its lock from that check to the write. run_evaluation also returns the scores.

test.py --temporal_sensitivity evaluates the same videos and views in every frame order
(ops.dataset.FRAME_ORDERS), a score file each, and prints the table of
ops.evaluation.order_sensitivity: top-1, the share of videos whose prediction changes from
the forward one, and how often a video of a class with a time-reversed twin is given the twin.
"""
import argparse
import contextlib
import json
import logging
import os
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
from torch.utils.data import Subset

from ops.checkpoint import checkpoint_categories, read_checkpoint
from ops.dataset import FRAME_ORDERS, TSNDataSet, ViewProtocol, load_checked_list, make_loader
from ops.dataset_config import get_dataset_config
from ops.errors import FlagError
from ops.evaluation import (
    check_finite_scores,
    check_view_memory,
    evaluate_models,
    order_sensitivity,
    time_reversed_pairs,
    write_calibration,
    write_error_analysis,
)
from ops.files import atomic_write, prepare_output
from ops.logs import setup_logging
from ops.MASNet import set_form
from ops.models import model_from_checkpoint
from ops.recognizer import ranked_prediction, write_submission
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
    check_weights,
    describe_labels,
    ensemble,
    lock_score_file,
    release_score_filename,
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


def video_limit(args):
    """Videos test.py evaluates at most: --max_num counts batches, as the release's
    (``if i >= max_num: break`` over the loader), --max_videos videos; None: all."""
    if args.max_videos is not None:
        return args.max_videos
    return None if args.max_num is None else args.max_num * args.batch_size


def model_settings(args, model, num_class, views):
    """What a score file of `model` depends on besides its checkpoint and list (all recorded
    in the file; a rerun with another value may not replace it): the model's shape, the
    videos evaluated, and every field of the view protocol `views`."""
    limit = video_limit(args)
    return dict(dataset=dataset_tag(args.dataset), num_class=num_class,
                temporal_type=model.temporal_type, arch=model.arch,
                num_segments=model.num_segments, input_size=model.crop_size,
                scale_size=model.scale_size, max_videos=-1 if limit is None else limit,
                **views.settings())


def score_name(args, model, views):
    """The score file name of `model` under `views`: this project's, or the release's
    (--release_score_name, read by the release's average_scores.py)."""
    dataset = dataset_tag(args.dataset)
    if args.release_score_name:
        return release_score_filename(dataset, model.num_segments, views.test_crops,
                                      views.num_clips, model.crop_size)
    return score_filename(dataset, model.temporal_type, model.arch, model.num_segments,
                          views.test_crops, views.num_clips, model.crop_size, views.name_tag())


class Evaluation(NamedTuple):
    """What run_evaluation computed: `result` (top-1, top-5, mean class accuracy of the
    ensemble, None for an unlabelled list), `scores` (one (N, C) array per checkpoint),
    `ensemble` ((N, C), their weighted mean), `labels` (N,), `video_ids` (N,) and the
    dataset's class names `categories`."""
    result: Optional[Tuple[float, float, float]]
    scores: List[np.ndarray]
    ensemble: np.ndarray
    labels: np.ndarray
    video_ids: List[str]
    categories: List[str]


def evaluate_checkpoints(args):
    """test.py: the (top-1, top-5, mean class accuracy) of run_evaluation(args)."""
    return run_evaluation(args).result


def run_evaluation(args) -> Evaluation:
    """Evaluate the checkpoints of ``args.weights`` as test.py's flags say.

    Under torchrun the videos are split over the processes (ShardSampler) and their scores
    gathered back in list order, so the numbers and files are those of one process; the first
    process logs and writes them; a process's input error is one line, printed by the first
    (ops.runtime.one_line_failures).
    Returns the Evaluation; its result is (top-1, top-5, mean class accuracy) of the ensemble
    (of the model, if only one) over the labelled videos; None for an unlabelled list (label
    -1: predictions only).
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
    if coeffs is not None:
        check_weights(coeffs, '--coeff')
    views = ViewProtocol.from_args(args)
    limit = video_limit(args)
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
                                      args.type, args.arch, args.input_size, views.full_res)
        num_segments = segments[k] = model.num_segments
        check_view_memory(args.batch_size, views.test_crops, views.num_clips, num_segments,
                          model.crop_size, runtime.device)
        transform = build_transform('test', model.crop_size, model.scale_size, model.input_mean,
                                    model.input_std, num_crops=views.test_crops)
        dataset = TSNDataSet(cfg.root_path, list_file, num_segments, cfg.image_tmpl, transform,
                             random_shift=False, test_mode=True, views=views, video_list=records,
                             video_backend=args.video_backend)
        if limit is not None:
            dataset = Subset(dataset, range(min(limit, len(dataset))))
        loaders.append(make_loader(dataset, batch_size=args.batch_size,
                                   sampler=ShardSampler(dataset, runtime.rank, runtime.world_size),
                                   workers=args.workers, timeout=args.loader_timeout,
                                   pin_memory=runtime.device.type == 'cuda'))
        # no DDP wrapper in evaluation: each process scores its own videos
        to_channels_last(set_form(args.mas_form, model), args.channels_last)
        models.append(compile_model((model.to(runtime.device) if runtime.distributed
                                     else wrap_model(model, runtime)).eval(), args.compile))
        names.append(score_name(args, model, views))
        settings.append(model_settings(args, model, cfg.num_class, views))
        logger.info(f"{path}: {model.temporal_type} {model.arch}, {num_segments} segments, "
                    f"{views.test_crops} crop(s) x {views.num_clips} clip(s) of "
                    f"{model.crop_size}px, frames {views.frame_order}")

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
        return _score(args, runtime, EvaluationPlan(cfg, list_file, weights, names, settings,
                                                    models, loaders, segments, coeffs, views))


class EvaluationPlan(NamedTuple):
    """What _evaluate prepared for one pass: the dataset config and list, and per checkpoint
    its path, score-file name and settings, model, loader and segments; the ensemble's
    --coeff weights (None: equal) and the view protocol."""
    cfg: object
    list_file: str
    weights: List[str]
    names: List[str]
    settings: List[dict]
    models: list
    loaders: list
    segments: List[int]
    coeffs: Optional[List[float]]
    views: ViewProtocol


def _score(args, runtime, plan: EvaluationPlan):
    """Evaluate, log, write the score files and predictions (under the score files' locks)."""
    cfg, list_file, weights, names, settings, models, loaders, segments, coeffs, views = plan
    scores, labels = evaluate_models(models, loaders, segments, runtime.device,
                                     use_softmax=views.softmax)
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
                                                scores_are_probabilities=views.softmax)
                calibration = write_calibration(out, model_scores, labels,
                                                scores_are_probabilities=views.softmax)
                logger.info(f"error analysis written to "
                            f"{os.path.dirname(analysis['confusion.npz'])} (expected "
                            f"calibration error {100 * calibration['ece']:.2f}%)")
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
        probabilities = final if views.softmax else softmax(final)
        write_submission(args.submission, [
            ranked_prediction(video_id, row, cfg.categories, 5, int(label))
            for video_id, row, label in zip(video_ids, probabilities, labels)])
        logger.info(f'submission written to {args.submission}')
    return Evaluation(result, scores, final, labels, video_ids, cfg.categories)


def temporal_sensitivity(args):
    """test.py --temporal_sensitivity: evaluate ``args`` in every frame order (their score
    files written as test.py's, one per order), log the table and write it to ``args.json``
    if given. Returns the table: ``{'videos', 'pairs': {'a/b': [name a, name b]}, 'orders':
    {order: order_sensitivity(...)}}`` of the checkpoint (of the ensemble for several)."""
    if args.frame_order != 'forward':
        raise FlagError(f'--temporal_sensitivity evaluates every frame order: drop '
                        f'--frame_order {args.frame_order}')
    if args.json:
        prepare_output(args.json, '--json')
    runs = {order: run_evaluation(argparse.Namespace(**{**vars(args), 'frame_order': order}))
            for order in FRAME_ORDERS}
    forward = runs['forward']
    twins = time_reversed_pairs(forward.categories)
    table = dict(weights=args.weights, videos=len(forward.labels),
                 pairs={f'{a}/{b}': [forward.categories[a], forward.categories[b]]
                        for a, b in sorted(twins.items()) if a < b},
                 orders={order: order_sensitivity(forward.ensemble, run.ensemble, run.labels,
                                                  twins) for order, run in runs.items()})
    log_sensitivity(table)
    if args.json:
        with atomic_write(args.json, 'w') as f:
            json.dump(table, f, indent=2)
        logger.info(f'temporal sensitivity written to {args.json}')
    return table


def log_sensitivity(table):
    """The table of temporal_sensitivity, a row per frame order, and the twin share of each
    pair of time-reversed classes in reversed order."""
    def percent(value):
        return '    -' if value is None else f'{value:6.2f}'

    twin_videos = table['orders']['forward']['twin_videos']
    logger.info(f"temporal sensitivity of {table['weights']} ({table['videos']} videos; twin: "
                f"% of the {twin_videos} videos of a class with a time-reversed twin given it)")
    logger.info('frame order   top-1  changed    twin')
    for order, row in table['orders'].items():
        logger.info(f"{order:<11} {percent(row['top1'])}   {percent(row['changed'])}  "
                    f"{percent(row['twin'])}")
    for pair, (share, count) in table['orders']['reversed']['pairs'].items():
        names = ' / '.join(table['pairs'][pair])
        logger.info(f'reversed, {names}: twin {share:.1f}% of {count} videos')
