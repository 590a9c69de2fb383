"""Predict with a trained model, no labels needed: the Python API behind predict.py.

    from ops.recognizer import Recognizer
    recognizer = Recognizer.from_checkpoint('ckpt.best.pth.tar')  # class names: the file's
    recognizer.predict('my_video.mp4', topk=5)      # -> Prediction (names + probabilities)
    recognizer.predict(frames)                       # decoded frames, OpenCV's BGR order
    recognizer.predict(frames, color_order='rgb')    # ... from PIL, PyAV rgb24, torchvision

Decoded frames are a list of ``(H, W, 3)`` uint8 arrays (or tensors), a ``(T, H, W, 3)`` uint8
numpy array or a ``(T, H, W, 3)`` uint8 tensor. Their channel order defaults to 'bgr', the
order of OpenCV (``cv2.VideoCapture``, ``cv2.imread``) and of every frame reader of this code
base, so frames read as predict.py and test.py read them give their scores unchanged; frames from
PIL, PyAV's ``to_ndarray(format='rgb24')``, decord, torchvision or imageio are RGB: pass
``color_order='rgb'``.

An input is a video file, a frame folder, a folder of videos / frame folders (or of class
folders of them), or a list file in the one list grammar of ops.dataset (``<path> <label>`` or
``<path> <num_frames|-> <label>``, label -1 if unknown): see ops/inputs.py. Clips are
sampled, cropped and averaged over views exactly as test.py does (same TSNDataSet, transform
and ``evaluate_models``), so the same flags give the same scores. The Prediction records and
their writers are in ops/predictions.py.
"""
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ops.dataset import (
    UNKNOWN_LABEL,
    DataError,
    TSNDataSet,
    VideoRecord,
    clips_per_video,
    make_loader,
)
from ops.dataset_config import read_categories
from ops.evaluation import check_finite_scores, check_view_memory, evaluate_models
from ops.inputs import as_bgr_frames, collect_inputs, frame_template, has_images, is_video_file
from ops.models import load_classifier
from ops.predictions import Prediction, ranked_prediction
from ops.scores import softmax
from ops.transforms import build_transform


class Recognizer:
    """A trained TemporalModel with its class names and test-time views.

    Args:
        model: the TemporalModel (moved to `device`, put in eval mode).
        categories: class names, one per class.
        device: where the model runs.
        test_crops: 1, 3, 5 or 10 crop views (as test.py).
        twice_sample / dense_sample / dense_sample_num: clips per video (as test.py).
        use_softmax: average softmax scores over views instead of logits (test.py --softmax).
        image_tmpl: frame file names of frame folders.
    """

    def __init__(self, model, categories: Sequence[str], device=None, test_crops: int = 1,
                 twice_sample: bool = False, dense_sample: bool = False,
                 dense_sample_num: int = 10, use_softmax: bool = False,
                 image_tmpl: str = '{:05d}.jpg'):
        if len(categories) != model.num_class:
            raise DataError(f'{len(categories)} class names for a model of {model.num_class} '
                            f'classes')
        self.device = torch.device(device) if device is not None else torch.device('cpu')
        self.model = model.to(self.device).eval()
        self.categories = list(categories)
        self.test_crops = test_crops
        self.twice_sample = twice_sample
        self.dense_sample = dense_sample
        self.dense_sample_num = dense_sample_num
        self.use_softmax = use_softmax
        self.image_tmpl = image_tmpl
        self.transform = build_transform('test', model.crop_size, model.scale_size,
                                         model.input_mean, model.input_std, num_crops=test_crops)

    @classmethod
    def from_checkpoint(cls, path: str, categories: Union[str, Sequence[str], None] = None,
                        num_segments: Optional[int] = None, temporal_type: Optional[str] = None,
                        arch: Optional[str] = None, input_size: Optional[int] = None,
                        full_res: bool = False, device=None, given_by: Optional[str] = None,
                        required: str = 'categories= (a category file or a list of names)',
                        trust_checkpoint: bool = False, **views) -> 'Recognizer':
        """Load a checkpoint as test.py does, with the class names it records.

        categories: a category file or a name list; required for checkpoints that record no
        names, else checked against theirs (a mismatch is a CheckpointError). given_by /
        required: how the caller's user gives the names, for the messages. trust_checkpoint:
        unpickle the file in full (``--trust_checkpoint``, only for files you trust).
        """
        if isinstance(categories, str):
            given_by = given_by or f"category file '{categories}'"
            categories = read_categories(categories)
        model, names, _ = load_classifier(
            path, categories, given_by or 'categories=', required, num_segments=num_segments,
            temporal_type=temporal_type, arch=arch, input_size=input_size, full_res=full_res,
            trust=trust_checkpoint)
        return cls(model, names, device, **views)

    @property
    def num_segments(self) -> int:
        return self.model.num_segments

    @property
    def num_clips(self) -> int:
        return clips_per_video(self.twice_sample, self.dense_sample, self.dense_sample_num)

    def sample_indices(self, num_frames: int) -> np.ndarray:
        """1-based frame indices of the test clips of a video of `num_frames` frames."""
        return self.dataset(None, []).sample_indices(num_frames)

    def dataset(self, root: Optional[str], records: List[VideoRecord]) -> TSNDataSet:
        """The test-mode TSNDataSet of `records` (test.py's sampling and views)."""
        return TSNDataSet(root, None, self.num_segments, self.image_tmpl, self.transform,
                          random_shift=False, test_mode=True, dense_sample=self.dense_sample,
                          twice_sample=self.twice_sample, dense_sample_num=self.dense_sample_num,
                          video_list=records)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities of view-averaged scores (N, C): softmax, unless already averaged
        softmax scores (use_softmax)."""
        return scores if self.use_softmax else softmax(scores)

    def ranked(self, video: str, probabilities: np.ndarray, topk: int = 5,
               label: int = UNKNOWN_LABEL, **extra) -> Prediction:
        """The Prediction of one probability vector (num_class,)."""
        return ranked_prediction(video, probabilities, self.categories, topk, label, **extra)

    def scores_of_records(self, root: str, records: List[VideoRecord], batch_size: int = 1,
                          workers: int = 0) -> np.ndarray:
        """View-averaged scores (N, num_class) of `records`, with a progress bar."""
        check_view_memory(batch_size, self.test_crops, self.num_clips, self.num_segments,
                          self.model.crop_size, self.device)
        loader = make_loader(self.dataset(root, records), batch_size=batch_size, shuffle=False,
                             workers=min(workers, len(records)),
                             pin_memory=self.device.type == 'cuda')
        scores, _ = evaluate_models([self.model], [loader], [self.num_segments], self.device,
                                    use_softmax=self.use_softmax)
        check_finite_scores(scores[0], 'the model', [r.path for r in records])
        return scores[0]

    def clip_scores(self, frames, color_order: str = 'bgr') -> np.ndarray:
        """View-averaged scores (num_class,) of sampled frames (clips x T of them; any input
        of as_bgr_frames, in `color_order`)."""
        clip, _ = self.transform(as_bgr_frames(frames, color_order),
                                 UNKNOWN_LABEL)  # (V*clips*T*3, H, W)
        clip = clip.to(self.device).view(-1, self.num_segments * 3, *clip.shape[-2:])
        with torch.no_grad():
            scores = self.model(clip).float()  # (V*clips, C)
        if self.use_softmax:
            scores = scores.softmax(dim=1)
        scores = scores.mean(dim=0).cpu().numpy()
        check_finite_scores(scores[None], 'the model')
        return scores

    def predict_frames(self, frames, topk: int = 5, video: str = 'frames', *,
                       color_order: str = 'bgr', **extra) -> Prediction:
        """Top-k of a decoded video (all its frames, in order), sampled as a test clip.

        frames: a list of ``(H, W, 3)`` uint8 arrays / tensors, or a ``(T, H, W, 3)`` uint8
        array / tensor; color_order: their channel order, 'bgr' (OpenCV's, the default) or
        'rgb' (PIL, PyAV rgb24, torchvision).
        """
        frames = as_bgr_frames(frames, color_order)
        if not frames:
            raise DataError(f"{video}: no frame to predict on")
        picked = [frames[i - 1] for i in self.sample_indices(len(frames)).tolist()]
        scores = self.clip_scores(picked)[None]  # (1, C)
        return self.ranked(video, self.probabilities(scores)[0], topk, **extra)

    def predict(self, source, topk: int = 5, batch_size: int = 1, workers: int = 0,
                color_order: str = 'bgr') -> Union[Prediction, List[Prediction]]:
        """Top-k of a path (one Prediction for a video/frame folder, a list for a folder of
        videos or a list file) or of decoded frames: a list of ``(H, W, 3)`` uint8 arrays, a
        ``(T, H, W, 3)`` uint8 numpy array or tensor, whose channel order is `color_order`
        ('bgr': OpenCV's and this code base's readers', the default; 'rgb': PIL's, PyAV's
        rgb24, torchvision's). Files are always read as test.py reads them."""
        if not isinstance(source, (str, os.PathLike)):
            return self.predict_frames(source, topk, color_order=color_order)
        source = os.fspath(source)
        root, records = collect_inputs(source, categories=self.categories)
        predictions = self.predict_records(root, records, topk, batch_size, workers)
        single = os.path.isfile(source) and is_video_file(source) or \
            os.path.isdir(source) and has_images(source)
        return predictions[0] if single else predictions

    def predict_records(self, root: str, records: List[VideoRecord], topk: int = 5,
                        batch_size: int = 1, workers: int = 0) -> List[Prediction]:
        """Top-k Predictions of `records` below `root`, in order."""
        folders = [r for r in records if not r.is_video_file]
        if folders:  # one template for all folders, as in a dataset
            self.image_tmpl = frame_template(os.path.join(root, folders[0].path), self.image_tmpl)
        probabilities = self.probabilities(self.scores_of_records(root, records, batch_size,
                                                                  workers))
        return [self.ranked(r.path, p, topk, r.label) for r, p in zip(records, probabilities)]


