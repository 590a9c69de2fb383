"""Prediction records: the top-k classes of a video (or of a window of one), ranked from its
class probabilities, and the files they are written to (JSON, CSV, a Something-Something V2
submission), each written atomically."""
import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

from ops.dataset import UNKNOWN_LABEL, DataError
from ops.files import atomic_write


@dataclass
class Prediction:
    """Top-k classes of one video: ``indices``/``names``/``probabilities`` best first."""
    video: str
    indices: List[int]
    names: List[str]
    probabilities: List[float]
    label: int = UNKNOWN_LABEL
    extra: dict = field(default_factory=dict)  # e.g. start/end of a sliding window
    label_name: str = ''  # the class name of `label`

    @property
    def top1(self) -> int:
        return self.indices[0]

    def as_dict(self) -> dict:
        out = {'video': self.video, **self.extra}
        if self.label != UNKNOWN_LABEL:
            out['label'] = self.label
            out['label_class'] = self.label_name
        out['topk'] = [{'index': i, 'class': n, 'probability': round(p, 6)}
                       for i, n, p in zip(self.indices, self.names, self.probabilities)]
        return out

    def as_text(self) -> str:
        head = ' '.join(f'{k}={v}' for k, v in self.extra.items())
        ranked = '  '.join(f'{r}. {n} ({p:.1%})' for r, (n, p) in
                           enumerate(zip(self.names, self.probabilities), start=1))
        return f'{self.video}{" " + head if head else ""}: {ranked}'


def ranked_prediction(video: str, probabilities: np.ndarray, categories: Sequence[str],
                      topk: int = 5, label: int = UNKNOWN_LABEL, **extra) -> Prediction:
    """The Prediction of one probability vector (num_class,): its `topk` classes, best first."""
    order = np.argsort(-probabilities, kind='stable')[:min(topk, len(probabilities))]
    return Prediction(video, [int(i) for i in order], [categories[i] for i in order],
                      [float(probabilities[i]) for i in order], label, extra,
                      '' if label == UNKNOWN_LABEL else categories[label])


def write_json(path: str, predictions: List[Prediction]) -> None:
    """``[{video, [label, label_class], topk: [{index, class, probability}]}]``, written
    atomically."""
    with atomic_write(path) as f:
        f.write(json.dumps([p.as_dict() for p in predictions], indent=1).encode())


def write_csv(path: str, predictions: List[Prediction]) -> None:
    """One row per video (window): video, [window columns], label and its class name (empty
    when unknown), then class/probability of each rank."""
    extra = list(predictions[0].extra) if predictions else []
    topk = max((len(p.indices) for p in predictions), default=0)
    header = ['video'] + extra + ['label', 'label_class'] + [
        f'{c}{r}' for r in range(1, topk + 1) for c in ('class', 'probability')]
    rows = [[p.video] + [p.extra[k] for k in extra]
            + (['', ''] if p.label == UNKNOWN_LABEL else [p.label, p.label_name])
            + [v for n, q in zip(p.names, p.probabilities) for v in (n, f'{q:.6f}')]
            for p in predictions]
    _write_rows(path, [header] + rows)


def write_submission(path: str, predictions: List[Prediction]) -> None:
    """Something-Something V2 submission: ``<video id>;<class 1>;...;<class 5>`` per video, the
    id being the video's folder / file name without extension."""
    lines = []
    for p in predictions:
        if len(p.names) < 5:
            raise DataError(f'--submission needs the top 5 classes; got --topk {len(p.names)}')
        video_id = os.path.splitext(os.path.basename(p.video.rstrip('/')))[0]
        lines.append(';'.join([video_id] + p.names[:5]))
    with atomic_write(path) as f:
        f.write(('\n'.join(lines) + '\n').encode())


def _write_rows(path, rows):
    text = io.StringIO()
    csv.writer(text, lineterminator='\n').writerows(rows)
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())
