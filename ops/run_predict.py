"""The prediction run behind predict.py: a Recognizer (ops.recognizer) over the inputs, or
over sliding windows of a video or stream (ops.stream), and the output files."""
import logging
from typing import List

import torch

from ops.dataset import ViewProtocol
from ops.dataset_config import get_dataset_config, read_categories
from ops.files import prepare_output
from ops.inputs import collect_inputs
from ops.MASNet import set_form
from ops.predictions import Prediction, write_csv, write_json, write_submission
from ops.recognizer import Recognizer
from ops.runtime import compile_model, to_channels_last
from ops.stream import sliding_window

logger = logging.getLogger('masnet')


def run_prediction(args) -> List[Prediction]:
    """predict.py: load the recognizer, predict the input (or its windows), write the outputs."""
    for flag in ('json', 'csv', 'submission', 'annotate'):
        if getattr(args, flag):
            prepare_output(getattr(args, flag), '--' + flag)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    # class names: the checkpoint's; --categories / --dataset are checked against them, and
    # needed for checkpoints that record none
    categories, given_by, image_tmpl = None, None, args.image_tmpl
    if args.categories:
        categories, given_by = read_categories(args.categories), f"--categories '{args.categories}'"
    elif args.dataset:
        cfg = get_dataset_config(args.dataset, args.dataset_path)
        categories, given_by, image_tmpl = cfg.categories, f'--dataset {args.dataset}', \
            args.image_tmpl or cfg.image_tmpl
    views = ViewProtocol.from_args(args)
    recognizer = Recognizer.from_checkpoint(
        args.weights, categories, args.test_segments, args.type, args.arch, args.input_size,
        device, given_by=given_by, required='--categories FILE or --dataset NAME',
        trust_checkpoint=args.trust_checkpoint, views=views,
        image_tmpl=image_tmpl or '{:05d}.jpg')
    model = recognizer.model
    recognizer.model = compile_model(
        to_channels_last(set_form(args.mas_form, model), args.channels_last), args.compile)
    logger.info(f'{args.weights}: {model.temporal_type} {model.arch}, {model.num_segments} '
                f'segments, {views.test_crops} crop(s) x {views.num_clips} {views.sampling} '
                f'clip(s) of {model.crop_size}px on {recognizer.device}')
    if args.window is not None:
        stride = args.stride or max(args.window // 2, 1)
        predictions = []
        for prediction in sliding_window(recognizer, args.input, args.window, stride, args.topk,
                                         args.annotate, args.max_frames):
            logger.info(prediction.as_text())
            predictions.append(prediction)
        if args.annotate:
            logger.info(f'annotated video written to {args.annotate}')
    else:
        root, records = collect_inputs(args.input, args.root, recognizer.categories)
        predictions = recognizer.predict_records(root, records, args.topk, args.batch_size,
                                                 args.workers)
        for prediction in predictions:
            logger.info(prediction.as_text())
    for path, write in ((args.json, write_json), (args.csv, write_csv),
                        (args.submission, write_submission)):
        if path:
            write(path, predictions)
            logger.info(f'predictions written to {path}')
    return predictions
