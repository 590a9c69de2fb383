"""Evaluate checkpoints with several crops / clips per video, alone or as an ensemble.

    python test.py --dataset somethingv1 --weights a.pth.tar --test_segments 8 --test_crops 1
    python test.py --dataset somethingv1 --weights a.pth.tar,b.pth.tar --test_segments 8,16 \
                   --test_crops 3 --full_res --twice_sample

Prints top-1 / top-5 / mean class accuracy of every model and of the ensemble and writes one
score file per model into --save_scores (read by average_scores.py).
"""
import argparse
import logging
import os

import torch
from torch.utils.data import DataLoader, Subset

from opts import add_data_args, add_model_args
from ops.checkpoint import read_checkpoint
from ops.dataset import TSNDataSet
from ops.dataset_config import get_dataset_config
from ops.distributed import setup_runtime, wrap_model
from ops.evaluation import (DEFAULT_SCORE_DIR, ensemble, evaluate_models, save_scores,
                            score_filename, summarize)
from ops.experiment import dataset_tag, exit_on_user_error, setup_logging
from ops.models import model_from_checkpoint
from ops.transforms import build_transform

logger = logging.getLogger('masnet')


def build_parser():
    parser = argparse.ArgumentParser(description='Multi-crop / multi-clip evaluation of MAS-Net.')
    add_data_args(parser)
    add_model_args(parser, defaults_from_checkpoint=True)
    parser.add_argument('--weights', required=True,
                        help='checkpoint(s), comma-separated for an ensemble')
    parser.add_argument('--test_segments', default=None,
                        help='segments per model, comma-separated (one value for all; default: '
                             'the checkpoint\'s, else 8)')
    parser.add_argument('--test_crops', default=1, type=int, choices=[1, 3, 5, 10],
                        help='1 center, 3 full-res, 5 corners+center, 10 = 5 + flips')
    parser.add_argument('--batch_size', default=1, type=int, help='videos per batch')
    parser.add_argument('--full_res', action='store_true',
                        help='crop input_size*256/224 (256 px) instead of input_size')
    parser.add_argument('--twice_sample', action='store_true', help='2 clips per video')
    parser.add_argument('--dense_sample', action='store_true', help='dense_sample_num clips')
    parser.add_argument('--dense_sample_num', default=10, type=int)
    parser.add_argument('--softmax', action='store_true', help='average softmax scores over views')
    parser.add_argument('--max_num', type=int, default=None, help='evaluate the first N videos')
    parser.add_argument('--test_list', default=None, help='list file (default: the val list)')
    parser.add_argument('--coeff', default=None, help='ensemble weights, comma-separated')
    parser.add_argument('--csv_file', default=None,
                        help='write "video_id;predicted class" lines (a submission file)')
    parser.add_argument('--save_scores', default=DEFAULT_SCORE_DIR,
                        help="folder of the score files ('' = don't write) (default: %(default)s)")
    parser.add_argument('--log_file', default=None, help='also write the results to this file')
    return parser


def _split(text, cast, count, flag):
    if text is None:
        return [None] * count
    values = [cast(v) for v in str(text).split(',') if v != '']
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f'{flag}: {len(values)} values for {count} checkpoint(s)')
    return values


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.log_file)
    runtime = setup_runtime(args.gpus)
    cfg = get_dataset_config(args.dataset, args.dataset_path)
    weights = [w for w in args.weights.split(',') if w]
    segments = _split(args.test_segments, int, len(weights), '--test_segments')
    coeffs = _split(args.coeff, float, len(weights), '--coeff') if args.coeff else None
    num_clips = 2 if args.twice_sample else args.dense_sample_num if args.dense_sample else 1
    list_file = args.test_list or cfg.val_list

    models, loaders, names = [], [], []
    for k, path in enumerate(weights):
        model = model_from_checkpoint(read_checkpoint(path), path, cfg.num_class, segments[k],
                                      args.type, args.arch, args.input_size, args.full_res)
        num_segments = segments[k] = model.num_segments
        transform = build_transform('test', model.crop_size, model.scale_size, model.input_mean,
                                    model.input_std, num_crops=args.test_crops)
        dataset = TSNDataSet(cfg.root_path, list_file, num_segments, cfg.image_tmpl, transform,
                             random_shift=False, test_mode=True, dense_sample=args.dense_sample,
                             twice_sample=args.twice_sample, dense_sample_num=args.dense_sample_num)
        if args.max_num is not None:
            dataset = Subset(dataset, range(min(args.max_num, len(dataset))))
        loaders.append(DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                  num_workers=args.workers,
                                  pin_memory=runtime.device.type == 'cuda'))
        models.append(wrap_model(model, runtime).eval())
        names.append(score_filename(dataset_tag(args.dataset), model.base_model_name, model.arch,
                                    num_segments, args.test_crops, num_clips, model.crop_size))
        logger.info(f"{path}: {model.base_model_name} {model.arch}, {num_segments} segments, "
                    f"{args.test_crops} crop(s) x {num_clips} clip(s) of {model.crop_size}px")

    scores, labels = evaluate_models(models, loaders, segments, runtime.device,
                                     use_softmax=args.softmax)
    base_set = loaders[0].dataset
    records = base_set.dataset.video_list if isinstance(base_set, Subset) else base_set.video_list
    video_ids = [r.path for r in records[:len(labels)]]
    for path, name, model_scores, num_segments in zip(weights, names, scores, segments):
        top1, top5, mean_class = summarize(model_scores, labels)
        logger.info(f'{path}: Prec@1 {top1:.2f}  Prec@5 {top5:.2f}  mean class acc {mean_class:.2f}'
                    f'  ({len(labels)} videos)')
        if args.save_scores:
            out = os.path.join(args.save_scores, name)
            save_scores(out, model_scores, labels, video_ids, weights=path,
                        num_segments=num_segments, test_crops=args.test_crops, num_clips=num_clips)
            logger.info(f'scores written to {out}')
    final = ensemble(scores, coeffs)
    if len(weights) > 1:
        top1, top5, mean_class = summarize(final, labels)
        logger.info(f'ensemble: Prec@1 {top1:.2f}  Prec@5 {top5:.2f}  mean class acc {mean_class:.2f}')
    if args.csv_file:
        with open(args.csv_file, 'w') as f:
            for video_id, pred in zip(video_ids, final.argmax(axis=1)):
                f.write(f'{video_id};{cfg.categories[pred]}\n')
        logger.info(f'predictions written to {args.csv_file}')
    return summarize(final, labels)


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
