"""Multi-view evaluation, shared by test.py and the Recognizer API: the scores of every video
averaged over its views (crops x clips), checked to be finite, and the memory one batch of
views needs checked before anything is decoded."""
import logging
import os
import time
from typing import List, Tuple

import numpy as np
import torch

from ops.checkpoint import unwrap_model
from ops.errors import UserError
from ops.logs import progress
from ops.meters import format_duration, throughput

logger = logging.getLogger('masnet')


class NonFiniteScoresError(UserError):
    """Scores with NaN / inf: finite weights whose logits overflow on these inputs."""


def check_finite_scores(scores, source, video_ids=None):
    """Refuse class scores (N, C) holding NaN or inf, naming `source` (e.g. the checkpoint) and
    the first such videos, so that no accuracy, ranking or score file is made of them."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(scores)).all(axis=-1))
    if bad.size:
        named = ('' if video_ids is None
                 else f" (first: {', '.join(str(video_ids[i]) for i in bad[:3])})")
        raise NonFiniteScoresError(f"{source}: non-finite scores for {bad.size} of "
                                   f"{len(scores)} video(s){named}: the model's outputs overflow "
                                   f"on this input; nothing reported or written")


def memory_bytes(device):
    """Bytes of the machine's memory, or the smaller GPU memory when `device` is CUDA."""
    total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if device.type == 'cuda':
        total = min(total, torch.cuda.mem_get_info(device)[1])
    return total


def check_view_memory(batch_size, crops, clips, segments, crop_size, device):
    """Refuse, before anything is decoded, test views whose one input batch (batch x crops x
    clips x T frames of 3 x crop x crop float32 values) exceeds the memory of the machine
    (of the GPU on CUDA)."""
    needed = batch_size * crops * clips * segments * 3 * crop_size ** 2 * 4
    available = memory_bytes(device)
    if needed > available:
        raise UserError(f'one batch of --batch_size {batch_size} x {crops} crop(s) x {clips} '
                        f'clip(s) x {segments} frames of {crop_size}px needs '
                        f'{needed / 2 ** 30:.4g} GiB, more than the {available / 2 ** 30:.4g} GiB '
                        f'of {device.type} memory: lower --dense_sample_num, --test_crops or '
                        f'--batch_size')


def average_views(scores: torch.Tensor, use_softmax: bool = False) -> torch.Tensor:
    """(N, C) scores of (N, V, C) view logits: the views' logits averaged, then softmax if
    `use_softmax` (as the release and TSM: softmax of the averaged logits)."""
    scores = scores.mean(dim=1)
    return scores.softmax(dim=1) if use_softmax else scores


@torch.no_grad()
def evaluate_models(models, loaders, num_segments: List[int], device: torch.device,
                    use_softmax: bool = False) -> Tuple[List[np.ndarray], np.ndarray]:
    """Per-video scores of every model, averaged over its views (crops x clips).

    models / loaders / num_segments: one entry per model; the loaders iterate the same
    videos in the same order (shuffle off). Returns (list of (N, num_class) arrays, labels).
    """
    outputs = [[] for _ in models]
    all_labels = []
    total = len(loaders[0].dataset)
    bar = progress(total=total, desc='test', unit='video')
    log_every = max(1, len(loaders[0]) // 10)  # without a bar: a line per tenth of the videos
    start, seen, views = time.time(), 0, 0  # views: clips through the models
    for batch, batches in enumerate(zip(*loaders), start=1):
        labels = batches[0][1]
        for k, (model, (clips, _), segments) in enumerate(zip(models, batches, num_segments)):
            n = clips.size(0)
            clips = clips.to(device).view(-1, segments * 3, *clips.shape[-2:])  # (N*V, T*3, H, W)
            views += clips.size(0)
            scores = model(clips).float().view(n, -1, unwrap_model(model).num_class)  # (N, V, C)
            outputs[k].append(average_views(scores, use_softmax).cpu())
        all_labels.append(labels)
        bar.update(labels.size(0))
        seen += labels.size(0)
        if bar.disable and (batch % log_every == 0 or batch == len(loaders[0])):
            logger.info(f'test: {throughput(seen, start, total, unit="videos")}')
    bar.close()
    elapsed = max(time.time() - start, 1e-9)
    logger.info(f'test: evaluated {seen} videos, {views} clips (views x models) in '
                f'{format_duration(elapsed)}: {seen / elapsed:.1f} videos/s, '
                f'{views / elapsed:.1f} clips/s')
    return [torch.cat(o).numpy() for o in outputs], torch.cat(all_labels).numpy()
