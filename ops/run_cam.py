"""The run behind CAM.py: load a checkpoint, find the video (a path, or an id of the dataset's
lists), and write the Grad-CAM figure of one clip (ops/gradcam.py)."""
import logging
import os

from ops.dataset import DataError, TSNDataSet, VideoRecord, parse_list_file
from ops.dataset_config import get_dataset_config
from ops.errors import FlagError
from ops.evaluation import check_finite_scores
from ops.files import prepare_output
from ops.gradcam import denormalize, grad_cam, save_cam_figure
from ops.models import load_classifier
from ops.runtime import setup_runtime
from ops.transforms import build_transform
from ops.video_readers import count_frames

logger = logging.getLogger('masnet')

# where `make demo` leaves its best checkpoint (CAM.py's default --weights)
DEMO_CHECKPOINT = os.path.join('experiments', 'synthetic', 'MASNet', 'resnet10', 'num_segments_8',
                               'demo', 'checkpoint', 'ckpt.best.pth.tar')


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


def explain(args):
    """Grad-CAM figure of one video as CAM.py's flags say; returns (cams, probabilities, class)."""
    runtime = setup_runtime(args.gpus)
    prepare_output(args.output, '--output')
    if not os.path.isfile(args.weights) and args.weights == DEMO_CHECKPOINT:
        raise DataError(f"no checkpoint at '{DEMO_CHECKPOINT}': "
                        "run `make demo` first or pass --weights")
    # class names: the checkpoint's, checked against --dataset's (needed when it records none)
    cfg = get_dataset_config(args.dataset, args.dataset_path) if args.dataset else None
    model, names, checkpoint = load_classifier(
        args.weights, cfg.categories if cfg else None, f'--dataset {args.dataset}',
        '--dataset NAME', num_segments=args.num_segments, temporal_type=args.type, arch=args.arch,
        input_size=args.input_size, trust=args.trust_checkpoint)
    model = model.to(runtime.device).eval()
    if args.target_class is not None and args.target_class >= model.num_class:
        raise FlagError(f'--target_class {args.target_class}: the model has {model.num_class} '
                        f'classes (0 to {model.num_class - 1})')
    if cfg is None and (args.video is None or not os.path.exists(args.video)):
        trained_on = (checkpoint.get('args') or {}).get('dataset')
        if trained_on is None:
            raise DataError(f"--video {args.video}: pass a frame folder or video file, or "
                            f"--dataset NAME to find the video in the dataset's lists")
        cfg = get_dataset_config(trained_on, args.dataset_path)  # where the video ids are
    root, record = find_video(args.video, cfg, args.label)
    image_tmpl = cfg.image_tmpl if cfg is not None else '{:05d}.jpg'
    transform = build_transform('val', model.crop_size, model.scale_size, model.input_mean,
                                model.input_std)
    dataset = TSNDataSet(root, None, model.num_segments, image_tmpl, transform,
                         random_shift=False, video_list=[record],
                         video_backend=args.video_backend)
    clip, label = dataset[0]
    clip = clip.unsqueeze(0).to(runtime.device)  # (1, T*3, H, W)
    cams, probabilities, target = grad_cam(model, clip, args.target_class)
    check_finite_scores(probabilities[None], args.weights, [record.path])

    predicted = int(probabilities.argmax())
    truth = names[label] if 0 <= label < model.num_class else 'unknown'
    title = (f'{record.path}   ground truth: {truth}\n'
             f'predicted: {names[predicted]} ({probabilities[predicted]:.0%})   '
             f'Grad-CAM of: {names[target]}')
    save_cam_figure(args.output, denormalize(clip, model.input_mean, model.input_std), cams, title)
    logger.info(f'{record.path}: ground truth {truth}, predicted {names[predicted]} '
                f'({probabilities[predicted]:.1%}); figure written to {args.output}')
    return cams, probabilities, target
