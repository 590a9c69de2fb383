"""Grad-CAM heat maps of a trained model on one video.

    python CAM.py                                    # the demo's model, first synthetic val video
    python CAM.py --dataset somethingv1 --dataset_path ../../datasets \
                  --weights your.pth.tar --video 12345 --output cam.png

--video is a frame folder, a video file, or a video id (folder name) of the dataset's lists.
"""
import argparse
import logging
import os

from opts import add_model_args
from ops.checkpoint import read_checkpoint
from ops.dataset import DataError, TSNDataSet, VideoRecord, count_frames, parse_list_file
from ops.dataset_config import get_dataset_config
from ops.distributed import setup_runtime
from ops.experiment import exit_on_user_error, setup_logging
from ops.gradcam import denormalize, grad_cam, save_cam_figure
from ops.models import model_from_checkpoint
from ops.transforms import build_transform

logger = logging.getLogger('masnet')

# where `make demo` leaves its best checkpoint
DEMO_CHECKPOINT = os.path.join('experiments', 'synthetic', 'MASNet', 'resnet10', 'num_segments_8',
                               'demo', 'checkpoint', 'ckpt.best.pth.tar')


def build_parser():
    parser = argparse.ArgumentParser(description='Grad-CAM visualisation of a MAS-Net checkpoint.')
    parser.add_argument('--dataset', default='synthetic', help='dataset of the checkpoint')
    parser.add_argument('--dataset_path', default=None,
                        help='default: data/ for synthetic, else ../../datasets/')
    parser.add_argument('--weights', default=DEMO_CHECKPOINT, help='checkpoint (default: the demo\'s)')
    parser.add_argument('--video', default=None,
                        help='frame folder, video file or video id (default: first val video)')
    parser.add_argument('--label', type=int, default=None,
                        help='ground-truth class of a --video given as folder/file, if known')
    parser.add_argument('--num_segments', type=int, default=None, help='default: the checkpoint\'s')
    parser.add_argument('--target_class', type=int, default=None, help='default: the predicted class')
    parser.add_argument('--output', default=os.path.join('imgs', 'CAM_result.png'))
    add_model_args(parser, defaults_from_checkpoint=True)
    return parser


def find_video(video, cfg, label=None):
    """(root, VideoRecord) for a folder / file path, or for a video id of the dataset's lists."""
    if video is None or not os.path.exists(video):
        for list_file in (cfg.val_list, cfg.train_list):
            if not os.path.isfile(list_file):
                continue
            for record in parse_list_file(list_file):
                if video is None or record.path == video:
                    return cfg.root_path, record
        raise DataError(f"--video '{video}' is neither a folder, a video file, nor a video id of "
                        f"{cfg.val_list} / {cfg.train_list}")
    root, name = os.path.split(os.path.abspath(video))
    record = VideoRecord(name, None, -1 if label is None else label)
    if os.path.isdir(video):
        record.num_frames = count_frames(video)
        if record.num_frames == 0:
            raise DataError(f"--video '{video}' holds no image file")
    return root, record


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    runtime = setup_runtime(args.gpus)
    if not os.path.isfile(args.weights) and args.weights == DEMO_CHECKPOINT:
        raise DataError(f"no checkpoint at '{DEMO_CHECKPOINT}': run `make demo` first or pass --weights")
    cfg = get_dataset_config(args.dataset, args.dataset_path)
    model = model_from_checkpoint(read_checkpoint(args.weights), args.weights, cfg.num_class,
                                  args.num_segments, args.type, args.arch, args.input_size)
    model = model.to(runtime.device).eval()
    root, record = find_video(args.video, cfg, args.label)
    transform = build_transform('val', model.crop_size, model.scale_size, model.input_mean,
                                model.input_std)
    dataset = TSNDataSet(root, None, model.num_segments, cfg.image_tmpl, transform,
                         random_shift=False, video_list=[record])
    clip, label = dataset[0]
    clip = clip.unsqueeze(0).to(runtime.device)  # (1, T*3, H, W)
    cams, probabilities, target = grad_cam(model, clip, args.target_class)

    predicted = int(probabilities.argmax())
    names = cfg.categories
    truth = names[label] if 0 <= label < cfg.num_class else 'unknown'
    title = (f'{record.path}   ground truth: {truth}\n'
             f'predicted: {names[predicted]} ({probabilities[predicted]:.0%})   '
             f'Grad-CAM of: {names[target]}')
    save_cam_figure(args.output, denormalize(clip, model.input_mean, model.input_std), cams, title)
    logger.info(f'{record.path}: ground truth {truth}, predicted {names[predicted]} '
                f'({probabilities[predicted]:.1%}); figure written to {args.output}')
    return cams, probabilities, target


if __name__ == '__main__':
    main()
