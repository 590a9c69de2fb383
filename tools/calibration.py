"""How much can a model's probabilities be trusted? Expected calibration error and a
reliability diagram of a score file, written into its error-analysis folder.

    python tools/calibration.py score/NAME.npz --bins 15

The confidence of a video is its largest class probability: the softmax of its view-averaged
logits, as a score file holds them by default, or the scores themselves for a file that test.py
wrote with --softmax (the file records which; a file without that record, e.g. the release's,
is taken for logits unless --probabilities). The labelled videos fall into --bins equal-width
confidence bins; the ECE is the video-weighted mean of |accuracy - mean confidence| over the
bins. Writes ``score/NAME_analysis/calibration.json`` and ``reliability.png``.
"""
import argparse

import numpy as np

from ops.cli import HelpFormatter, exit_on_user_error
from ops.evaluation import CALIBRATION_BINS, write_calibration
from ops.scores import ScoreFileError, load_scores
from opts import int_at_least


def scores_are_probabilities(data, path, assumed):
    """Whether a loaded score file holds probabilities: its test.py --softmax record, else
    `assumed`; refused when such scores are not rows of probabilities."""
    probabilities = bool(np.asarray(data['softmax']).item()) if 'softmax' in data else assumed
    if probabilities:
        sums = data['scores'].sum(axis=1)
        if (data['scores'] < 0).any() or not np.allclose(sums, 1, atol=1e-3):
            raise ScoreFileError(f"score file '{path}': its scores are taken for probabilities "
                                 f"but are not (row sums {sums.min():.4g} to {sums.max():.4g})")
    return probabilities


def build_parser():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('score_file', help='a score file of test.py (npz)')
    parser.add_argument('--bins', type=int_at_least(1), default=CALIBRATION_BINS,
                        help='equal-width confidence bins (default: %(default)s)')
    parser.add_argument('--probabilities', action='store_true',
                        help='a file without the --softmax record holds probabilities '
                             '(default: logits)')
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    data = load_scores(args.score_file)
    probabilities = scores_are_probabilities(data, args.score_file, args.probabilities)
    if not np.any(data['labels'] >= 0):
        raise ScoreFileError(f"score file '{args.score_file}' holds no labelled video: no "
                             f"calibration")
    result = write_calibration(args.score_file, data['scores'], data['labels'], probabilities,
                               args.bins)
    print(f"{args.score_file}: ECE {100 * result['ece']:.2f}% over {result['videos']} videos, "
          f"{args.bins} bins; confidence: {result['confidence']}")
    print(f"written to {result['json']} and {result['png']}")
    return result


if __name__ == '__main__':
    main()
