"""Grad-CAM on the last backbone stage of a TemporalModel, and its figure: the frames above
their heat-map overlays (CAM.py's run is ops/run_cam.py)."""
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ops.files import atomic_write


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


