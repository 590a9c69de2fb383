"""Grad-CAM: the maps of one clip on the last backbone stage of a TemporalModel, their figure
(the frames above their heat-map overlays), and the run behind CAM.py: load a checkpoint, find
the video (a path, or an id of the dataset's lists), write the figure of one clip."""
import logging
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ops.checkpoint import checkpoint_args
from ops.dataset import DataError, TSNDataSet, VideoRecord, parse_list_file
from ops.dataset_config import get_dataset_config
from ops.errors import FlagError
from ops.evaluation import check_finite_scores
from ops.files import atomic_write, prepare_output
from ops.models import load_classifier
from ops.runtime import setup_runtime
from ops.transforms import build_transform
from ops.video_readers import count_frames

logger = logging.getLogger('masnet')

# where `make demo` leaves its best checkpoint (CAM.py's default --weights)
DEMO_CHECKPOINT = os.path.join('experiments', 'synthetic', 'MASNet', 'resnet10', 'num_segments_8',
                               'demo', 'checkpoint', 'ckpt.best.pth.tar')


def grad_cam(model, clip, target_class=None):
    """Class activation maps of one clip.

    model: a TemporalModel (its ``base_model.layer4`` is the explained stage).
    clip: ``(1, T*3, H, W)`` normalised input on the model's device.
    target_class: class to explain (default: the predicted one).
    Returns (cams ``(T, H, W)`` in [0, 1] (normalised over the clip), class probabilities
    ``(num_class,)``, explained class).
    """
    stage = model.base_model.layer4
    store = {}

    def keep(module, inputs, output):
        store['activation'] = output
        output.register_hook(lambda grad: store.__setitem__('gradient', grad))

    handle = stage.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(clip)  # (1, num_class)
            target = int(logits.argmax(dim=1)) if target_class is None else int(target_class)
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
    finally:
        handle.remove()
        model.train(was_training)
    activation = store['activation'].detach()  # (T, C, h, w)
    gradient = store['gradient'].detach()  # (T, C, h, w)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (T, C, 1, 1)
    cams = F.relu((weights * activation).sum(dim=1, keepdim=True))  # (T, 1, h, w)
    cams = F.interpolate(cams, size=clip.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
    cams = cams - cams.min()
    cams = cams / cams.max().clamp_min(1e-12)
    probabilities = logits.detach().softmax(dim=1)[0]
    return cams.cpu().numpy(), probabilities.cpu().numpy(), target


def denormalize(clip, mean, std):
    """``(1, T*3, H, W)`` normalised clip -> list of T ``(H, W, 3)`` uint8 RGB frames."""
    frames = clip.detach().cpu().view(-1, 3, *clip.shape[-2:])  # (T, 3, H, W)
    frames = frames * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    frames = (frames.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return list(frames)


def overlay(frame, cam, strength=0.5):
    """Blend a jet-coloured heat map `cam` (H, W) in [0, 1] over an RGB uint8 frame."""
    heat = cv2.applyColorMap(np.uint8(np.round(cam * 255)), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return np.uint8(np.round((1 - strength) * frame + strength * heat))


def save_cam_figure(path, frames, cams, title):
    """A figure with the frames (top row) and their Grad-CAM overlays (bottom row)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    count = len(frames)
    fig, axes = plt.subplots(2, count, figsize=(1.6 * count, 3.6), squeeze=False)
    for t in range(count):
        axes[0, t].imshow(frames[t])
        axes[1, t].imshow(overlay(frames[t], cams[t]))
        axes[0, t].set_title(f'frame {t + 1}', fontsize=8)
        for row in (0, 1):
            axes[row, t].axis('off')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=120, format=os.path.splitext(path)[1][1:] or 'png')
    plt.close(fig)


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
        trained_on = checkpoint_args(checkpoint).get('dataset')
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
