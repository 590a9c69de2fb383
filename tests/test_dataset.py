"""Data pipeline: sampling formulas, group transforms, flips, video files, configs, bad input."""
import json
import logging
import os
import random

import cv2
import numpy as np
import pytest
import torch

from ops import dataset as D
from ops.dataset_config import DatasetError, get_dataset_config, mirror_pairs
from ops.synthetic import SYNTHETIC_CLASSES, generate_synthetic
from ops.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GroupFullResSample,
    GroupMultiScaleCrop,
    build_transform,
    fixed_offsets,
)

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


# ---- sampling (SPEC 3.3; indices 1-based) ---------------------------------------------------

@pytest.mark.parametrize('n,expected', [
    (80, [6, 16, 26, 36, 46, 56, 66, 76]),  # tick 10: the middle of each segment
    (20, [2, 4, 7, 9, 12, 14, 17, 19]),  # tick 2.5: int(1.25 + 2.5 i) + 1
    (8, [1, 2, 3, 4, 5, 6, 7, 8]),
    (3, [1, 1, 1, 2, 2, 3, 3, 3]),  # short video: frames spread, not all frame 1
])
def test_val_indices(n, expected):
    assert D.sample_val_indices(n, 8).tolist() == expected


def test_train_indices_long_video_one_per_segment():
    # d = 50 // 8 = 6: segment i covers frames 6i+1 .. 6i+6; RandomState(0).randint(6, size=8)
    # draws 4 5 0 3 3 3 1 3
    assert D.sample_train_indices(50, 8, np.random.RandomState(0)).tolist() == \
        [5, 12, 13, 22, 28, 34, 38, 46]


def test_train_indices_exact_and_short():
    assert D.sample_train_indices(8, 8, np.random.RandomState(1)).tolist() == list(range(1, 9))
    assert (D.sample_train_indices(3, 8, np.random.RandomState(1)).tolist()
            == [1, 1, 1, 2, 2, 2, 3, 3])
    # n // T == 0 but n > T cannot happen; n between T and 2T: d = 1, one frame per segment
    idx = D.sample_train_indices(12, 8, np.random.RandomState(2)).tolist()
    assert idx == list(range(1, 9))


def test_twice_indices():
    # tick 5: the val clip int(2.5 + 5i) + 1, then the segment starts int(5i) + 1
    expected = [3, 8, 13, 18, 23, 28, 33, 38, 1, 6, 11, 16, 21, 26, 31, 36]
    assert D.sample_twice_indices(40, 8).tolist() == expected
    assert D.ViewProtocol.from_flags(twice_sample=True).sample_indices(40, 8).tolist() == expected


def test_dense_test_indices_of_a_short_video_spread_its_frames():
    # 5 frames, T = 8 (tick < 1): every clip starts at frame 1 and repeats frames in order
    assert D.sample_dense_test_indices(5, 8, 10).tolist() == [1, 1, 2, 2, 3, 4, 4, 5] * 10


def test_dense_train_indices():
    T = 8
    stride = 64 // T
    idx = D.sample_dense_train_indices(100, T, np.random.RandomState(0))
    start = np.random.RandomState(0).randint(0, 100 - 64)
    assert idx.tolist() == [(i * stride + start) % 100 + 1 for i in range(T)]
    # shorter than the window: starts at 0 and wraps around
    assert D.sample_dense_train_indices(20, T).tolist() == [(i * stride) % 20 + 1 for i in range(T)]
    assert D.sample_dense_train_indices(100, T, center=True).tolist() == \
        [(i * stride + 18) + 1 for i in range(T)]


# ---- transforms -----------------------------------------------------------------------------

def coordinate_frames(w=160, h=120, count=2):
    """BGR frames whose red channel encodes x and green encodes y."""
    xs = np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :], (h, w))
    ys = np.broadcast_to(np.arange(h, dtype=np.uint8)[:, None], (h, w))
    frame = np.stack([np.zeros_like(xs), ys, xs], axis=2).copy()
    return [frame.copy() for _ in range(count)]


def unnormalise(t):
    t = t.view(-1, 3, *t.shape[-2:])
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((t * std + mean) * 255).round()


def test_normalisation_values():
    bgr = [(0, 128, 255), (10, 20, 30)]
    frames = [np.full((10, 10, 3), v, np.uint8) for v in bgr]
    out, _ = build_transform('val', 8, 10, MEAN, STD)(frames, 0)
    assert out.shape == (6, 8, 8)
    for k, values in enumerate(bgr):
        for c, v in enumerate(reversed(values)):  # tensor channels are RGB
            expected = (v / 255 - MEAN[c]) / STD[c]
            assert out[3 * k + c, 0, 0].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize('crops,views', [(1, 1), (3, 3), (5, 5), (10, 10)])
def test_test_crop_counts(crops, views):
    frames = coordinate_frames(count=4)
    out, label = build_transform('test', 64, 73, MEAN, STD, num_crops=crops)(frames, 3)
    assert out.shape == (views * 4 * 3, 64, 64) and label == 3


def test_multi_view_rows_hold_one_clip_under_one_crop():
    """3 crops x 2 clips of T = 4: every (T*3)-channel row the model gets holds the T frames of
    one clip, in order, under one crop; rows are crop-major (view = crop * clips + clip)."""
    from ops.evaluation import evaluate_models
    T, num_clips = 4, 2
    frames = coordinate_frames(w=200, h=100, count=T * num_clips)
    for f, frame in enumerate(frames):
        frame[..., 0] = 10 * f + 5  # blue encodes the frame's position in the sampled list
    clip_tensor, _ = build_transform('test', 100, 100, MEAN, STD, num_crops=3)(frames, 0)

    class Recorder(torch.nn.Module):
        num_class = 2

        def forward(self, x):
            self.seen = x
            return torch.zeros(x.size(0), 2)

    class Loader(list):
        dataset = [None]

    recorder = Recorder()
    evaluate_models([recorder], [Loader([(clip_tensor[None], torch.tensor([0]))])], [T],
                    torch.device('cpu'))
    rows = unnormalise(recorder.seen).view(3 * num_clips, T, 3, 100, 100)  # RGB
    for row in range(3 * num_clips):
        crop, clip = divmod(row, num_clips)
        assert [int(rows[row, t, 2, 0, 0]) for t in range(T)] == \
            [10 * (clip * T + t) + 5 for t in range(T)], row
        assert {int(rows[row, t, 0, 0, 0]) for t in range(T)} == {[0, 100, 50][crop]}, row


def release_full_res_offsets(image_w, image_h, crop):
    """The release's GroupFullResSample offsets, from its formula: steps of a quarter of the
    free space, (0, 2 hs) left, (4 ws, 2 hs) right, (2 ws, 2 hs) center."""
    ws, hs = (image_w - crop) // 4, (image_h - crop) // 4
    return [(0 * ws, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 2 * hs)]


@pytest.mark.parametrize('w, h', [(200, 100), (200, 102), (200, 103), (203, 101), (101, 101)])
def test_three_crop_offsets_are_the_releases(w, h):
    """Landscape frames: left, right, center at the release's vertical offset
    2 * ((h - crop) // 4), 1 px above (h - crop) // 2 where (h - crop) % 4 is 2 or 3."""
    crop = 100
    frames = coordinate_frames(w=w, h=h, count=1)  # red encodes x, green y
    views = GroupFullResSample(crop)(frames)
    assert GroupFullResSample(crop).offsets(w, h) == release_full_res_offsets(w, h, crop)
    for view, (x, y) in zip(views, release_full_res_offsets(w, h, crop)):
        np.testing.assert_array_equal(view[0], frames[0][y:y + crop, x:x + crop])
        assert view[0].shape[:2] == (crop, crop)


@pytest.mark.parametrize('w, h', [(100, 200), (102, 203)])
def test_three_crops_of_portrait_frames_are_top_bottom_center(w, h):
    """Portrait frames (a documented difference: the release's crops coincide there): the
    landscape rule transposed, top, bottom, center at 2 * ((w - crop) // 4)."""
    frames = coordinate_frames(w=w, h=h, count=1)
    tall = GroupFullResSample(100).offsets(w, h)
    assert tall == [(y, x) for x, y in release_full_res_offsets(h, w, 100)]
    assert tall[1][1] == h - 100 - (h - 100) % 4 and tall[0] == (2 * ((w - 100) // 4), 0)
    for view, (x, y) in zip(GroupFullResSample(100)(frames), tall):
        np.testing.assert_array_equal(view[0], frames[0][y:y + 100, x:x + 100])


def test_five_and_ten_crop_positions():
    frames = coordinate_frames(w=100, h=80, count=1)
    out, _ = build_transform('test', 40, 80, MEAN, STD, num_crops=10)(frames, 0)
    img = unnormalise(out)  # (10, 3, 40, 40)
    corners = [(int(img[v, 0, 0, 0]), int(img[v, 1, 0, 0])) for v in range(5)]
    assert corners == [(0, 0), (60, 0), (0, 40), (60, 40), (30, 20)]
    for v in range(5):  # views 5..9 are the mirrors of 0..4
        assert torch.equal(img[5 + v], img[v].flip(-1))


def test_multiscale_crop_uses_fixed_offsets_and_sizes():
    crop = GroupMultiScaleCrop(64)
    rng = random.Random(0)
    for _ in range(50):
        x, y, w, h = crop.crop_box(160, 120, rng)
        sizes = {int(120 * s) for s in (1, .875, .75, .66)}
        assert w in sizes and h in sizes
        assert (x, y) in fixed_offsets(160, 120, w, h)
    assert len(fixed_offsets(160, 120, 64, 64)) == 13
    out, _ = build_transform('train', 64, 73, MEAN, STD, flip=False)(coordinate_frames(), 0)
    assert out.shape == (6, 64, 64)


@pytest.mark.slow
def test_flip_swaps_only_mirror_classes():
    frames = coordinate_frames(count=3)
    mirror = mirror_pairs(SYNTHETIC_CLASSES)
    assert mirror == {0: 1, 1: 0, 6: 7, 7: 6}
    transform = build_transform('train', 64, 73, MEAN, STD, flip=True, mirror_map=mirror)
    seen = {}
    for label in range(8):
        for trial in range(30):
            random.seed(trial)
            out, new_label = transform(frames, label)
            img = unnormalise(out)
            flipped = img[0, 0, 0, 0] > img[0, 0, 0, -1]  # x decreases to the right
            assert new_label == (mirror.get(label, label) if flipped else label)
            seen[(label, bool(flipped))] = True
    assert all(seen.get((label, f)) for label in range(8) for f in (True, False))


def test_something_v1_mirror_pairs():
    names = ['class %d' % i for i in range(174)]
    names[86] = 'Pulling something from left to right'
    names[87] = 'Pulling something from right to left'
    names[93] = 'Pushing something from left to right'
    names[94] = 'Pushing something from right to left'
    names[166] = 'Turning the camera left while filming something'
    names[167] = 'Turning the camera right while filming something'
    names[10] = 'Moving something and something closer to each other'
    names[11] = 'Moving something and something away from each other'
    names[12] = 'Lifting up one end of something without letting it drop down'
    assert mirror_pairs(names) == {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}


# ---- datasets -------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_balanced(tmp_path):
    kw = dict(train_per_class=2, val_per_class=1, width=48, height=32, min_frames=4, max_frames=6)
    a = generate_synthetic(str(tmp_path / 'a'), **kw)
    b = generate_synthetic(str(tmp_path / 'b'), **kw)
    for name in ('category.txt', 'train.txt', 'valid.txt'):
        assert open(os.path.join(a, name)).read() == open(os.path.join(b, name)).read()
    first = open(os.path.join(a, 'train.txt')).readline().split()[0]
    assert open(os.path.join(a, 'frames', first, '00001.jpg'), 'rb').read() == \
        open(os.path.join(b, 'frames', first, '00001.jpg'), 'rb').read()
    labels = [int(line.split()[2]) for line in open(os.path.join(a, 'train.txt'))]
    assert sorted(labels) == sorted(list(range(8)) * 2)


def test_synthetic_pairs_are_time_reversed(tmp_path):
    """A right-to-left clip is a left-to-right clip played backwards: its object moves left."""
    root = generate_synthetic(str(tmp_path / 's'), train_per_class=1, val_per_class=1, width=96,
                              height=64, min_frames=8, max_frames=8)

    def object_x(folder, index):
        img = cv2.imread(os.path.join(root, 'frames', folder, f'{index:05d}.jpg')).astype(float)
        sat = img.max(axis=2) - img.min(axis=2)  # the object is saturated, the background grey
        return np.nonzero(sat > 120)[1].mean()
    assert object_x('train_0_0000', 8) > object_x('train_0_0000', 1) + 10
    assert object_x('train_1_0000', 8) < object_x('train_1_0000', 1) - 10


def test_dataset_item_and_modes(tiny_data_root):
    cfg = get_dataset_config('synthetic', tiny_data_root)
    assert cfg.num_class == 8 and cfg.mirror_map == {0: 1, 1: 0, 6: 7, 7: 6}
    t = build_transform('test', 32, 36, MEAN, STD, num_crops=3)
    ds = D.TSNDataSet(cfg.root_path, cfg.val_list, 4, cfg.image_tmpl, t, random_shift=False,
                      test_mode=True, twice_sample=True)
    x, y = ds[0]
    assert ds.num_clips == 2 and x.shape == (3 * 2 * 4 * 3, 32, 32)
    assert y == ds.video_list[0].label


@pytest.mark.parametrize('flags, sampling, clips', [
    ({}, 'center', 1), ({'twice_sample': True}, 'twice', 2),
    ({'dense_sample': True}, 'dense', 3), ({'test_sampling': 'random'}, 'random', 3)])
def test_view_protocol_clips_are_what_test_sampling_draws(flags, sampling, clips):
    """The one clip count (test.py's score names and settings, the Recognizer, the dataset)
    agrees with the indices test-mode sampling draws: clips x T of them."""
    views = D.ViewProtocol.from_flags(dense_sample_num=3, **flags)
    assert (views.sampling, views.num_clips) == (sampling, clips)
    ds = D.TSNDataSet(None, None, 4, test_mode=True, views=views, video_list=[])
    assert ds.num_clips == clips and len(ds.sample_indices(100, 'v')) == 4 * clips
    legacy = {k: v for k, v in flags.items() if k != 'test_sampling'}
    if len(legacy) == len(flags):  # the release's keywords give the same protocol
        assert D.TSNDataSet(None, None, 4, test_mode=True, dense_sample_num=3, video_list=[],
                            **legacy).views == views
    train = D.TSNDataSet(None, None, 4, test_mode=False, views=views, video_list=[])
    assert train.num_clips == 1


@pytest.mark.parametrize('flags', [dict(twice_sample=True, dense_sample=True),
                                   dict(twice_sample=True, test_sampling='dense'),
                                   dict(test_sampling='nope')])
def test_view_protocol_refuses_two_samplings_or_an_unknown_one(flags):
    with pytest.raises(D.FlagError):
        D.ViewProtocol.from_flags(**flags)


def test_view_protocol_is_the_release_sampling_by_default():
    """test mode through the protocol gives the release's val / twice / dense indices."""
    for n in (3, 8, 25, 40, 64, 301):
        for T in (4, 8):
            center = D.ViewProtocol.from_flags().sample_indices(n, T)
            assert center.tolist() == D.sample_val_indices(n, T).tolist()
            tick = n / T
            twice = D.ViewProtocol.from_flags(twice_sample=True).sample_indices(n, T)
            assert twice.tolist() == [int(tick / 2.0 + tick * i) + 1 for i in range(T)] + \
                [int(tick * i) + 1 for i in range(T)]
            dense = D.ViewProtocol.from_flags(dense_sample=True, dense_sample_num=4)
            assert dense.sample_indices(n, T).tolist() == \
                D.sample_dense_test_indices(n, T, 4).tolist()


def test_random_sampling_is_seeded_per_video():
    """--test_sampling random: K clips, one frame in every segment at one offset per clip; the
    same (seed, video) gives the same clips in any order or process, others other clips."""
    views = D.ViewProtocol.from_flags(test_sampling='random', test_seed=3, dense_sample_num=4)
    a = views.sample_indices(100, 8, 'video_a')
    assert a.tolist() == views.sample_indices(100, 8, 'video_a').tolist()
    assert a.tolist() != views.sample_indices(100, 8, 'video_b').tolist()
    other_seed = D.ViewProtocol.from_flags(test_sampling='random', test_seed=4, dense_sample_num=4)
    assert a.tolist() != other_seed.sample_indices(100, 8, 'video_a').tolist()
    clips = a.reshape(4, 8) - 1  # 0-based, tick 12.5
    offsets = clips - (12.5 * np.arange(8)).astype(int)
    assert ((clips >= 12.5 * np.arange(8) - 1) & (clips < 12.5 * (np.arange(8) + 1))).all()
    assert len({tuple(c) for c in clips}) == 4  # four different clips
    for clip, offset in zip(clips, offsets):
        assert offset.max() - offset.min() <= 1  # one offset per clip (up to the int rounding)
    u = D.video_rng(3, 'video_a').random()  # the first clip's draw: int(tick*i + u*tick)
    assert clips[0].tolist() == [int(12.5 * i + u * 12.5) for i in range(8)]
    for n in (1, 5, 8, 9, 301):  # short and long videos stay within 1..n
        indices = views.sample_indices(n, 8, 'v')
        assert indices.min() >= 1 and indices.max() <= n


def test_a_registered_sampling_reaches_the_flags_and_the_score_settings(monkeypatch):
    """A new test sampling is one function and one name: test.py's and predict.py's
    --test_sampling offer it, the protocol draws it, the score file records and names it."""
    import predict
    import test as test_main
    monkeypatch.setitem(D.TEST_SAMPLINGS, 'last', None)  # removed again after the test

    @D.register_sampling('last', clips=1)
    def sample_last(num_frames, num_segments, clip, num_clips, rng):
        return np.full(num_segments, num_frames)

    for parser, head in ((test_main.build_parser(), ['--weights', 'w']),
                         (predict.build_parser(), ['v.mp4', '--weights', 'w'])):
        views = D.ViewProtocol.from_args(parser.parse_args(head + ['--test_sampling', 'last']))
        assert views.sampling == 'last' and views.sample_indices(9, 4).tolist() == [9] * 4
        assert views.settings()['sampling'] == 'last' and views.name_tag() == '_last'


def view_group_flags(parser):
    """The dests of the 'test-time views' argument group of a parser."""
    group = next(g for g in parser._action_groups if g.title == 'test-time views')
    return {action.dest for action in group._group_actions}


def test_every_view_flag_is_read_by_the_view_protocol():
    """A flag added to opts.add_view_args's group must be a parameter of
    ViewProtocol.from_flags (so it reaches test.py, predict.py and the score settings), and
    every parameter is a flag: none is accepted and silently ignored."""
    import inspect

    import predict
    import test as test_main
    parameters = set(inspect.signature(D.ViewProtocol.from_flags).parameters)
    for parser in (test_main.build_parser(), predict.build_parser()):
        assert view_group_flags(parser) == parameters
    # each flag changes the protocol test.py builds from it (with the flag that it qualifies)
    base = ['--weights', 'w']
    default = D.ViewProtocol.from_args(test_main.parse_args(base))
    changes = {'test_crops': ['--test_crops', '3'], 'full_res': ['--full_res'],
               'twice_sample': ['--twice_sample'], 'dense_sample': ['--dense_sample'],
               'dense_sample_num': ['--dense_sample', '--test_clips', '4'],
               'test_sampling': ['--test_sampling', 'random'],
               'test_seed': ['--test_sampling', 'random', '--test_seed', '7'],
               'softmax': ['--softmax'], 'frame_order': ['--frame_order', 'reversed']}
    assert set(changes) == parameters
    seen = {default}
    for flag, argv in changes.items():
        views = D.ViewProtocol.from_args(test_main.parse_args(base + argv))
        assert views not in seen, flag
        seen.add(views)


def test_view_settings_are_the_protocol_fields():
    views = D.ViewProtocol.from_flags(test_crops=3, full_res=True, twice_sample=True)
    assert views.settings() == dict(test_crops=3, full_res=True, sampling='twice', num_clips=2,
                                    softmax=False, frame_order='forward')
    seeded = D.ViewProtocol.from_flags(test_sampling='random', test_seed=2, dense_sample_num=5)
    assert seeded.settings()['test_seed'] == 2 and seeded.name_tag() == '_random_seed2'


def write_video(path, frames, fps=10):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()


def test_video_file_matches_frame_folder(tmp_path):
    rng = np.random.RandomState(0)
    frames = [cv2.resize(rng.randint(0, 255, (6, 8, 3)).astype(np.uint8), (64, 48),
                         interpolation=cv2.INTER_CUBIC) for _ in range(12)]
    os.makedirs(tmp_path / 'clip')
    for i, f in enumerate(frames, 1):
        cv2.imwrite(str(tmp_path / 'clip' / f'{i:05d}.jpg'), f)
    write_video(tmp_path / 'clip.avi', frames)
    (tmp_path / 'list.txt').write_text('clip 12 0\nclip.avi 12 0\nclip.avi - 0\n')
    ds = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 4, '{:05d}.jpg', None,
                      random_shift=False)
    from_folder, from_video, counted = ds[0][0], ds[1][0], ds[2][0]
    assert len(from_video) == 4
    for a, b, c in zip(from_folder, from_video, counted):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 10  # two lossy codecs
        assert np.array_equal(b, c)


def test_missing_and_truncated_frames_are_replaced(tmp_path, caplog):
    os.makedirs(tmp_path / 'v')
    for i in range(1, 9):
        cv2.imwrite(str(tmp_path / 'v' / f'{i:05d}.jpg'), np.full((16, 16, 3), i * 20, np.uint8))
    os.remove(tmp_path / 'v' / '00003.jpg')
    data = (tmp_path / 'v' / '00006.jpg').read_bytes()
    (tmp_path / 'v' / '00006.jpg').write_bytes(data[:len(data) // 2])
    (tmp_path / 'list.txt').write_text('v 8 0\n')
    ds = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 8, '{:05d}.jpg', None,
                      random_shift=False)
    with caplog.at_level(logging.WARNING, logger='masnet.data'):
        frames, _ = ds[0]
    values = [int(f[0, 0, 0]) for f in frames]
    assert values[2] in (40, 80) and values[5] in (100, 140)  # neighbours of frames 3 and 6
    assert '00003.jpg' in caplog.text and '00006.jpg' in caplog.text


def test_unreadable_video_policy(tmp_path):
    os.makedirs(tmp_path / 'empty')
    os.makedirs(tmp_path / 'good')
    for i in range(1, 5):
        cv2.imwrite(str(tmp_path / 'good' / f'{i:05d}.jpg'), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / 'list.txt').write_text('empty 4 0\ngood 4 1\nmissing 4 2\n')
    train = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 4, '{:05d}.jpg', None)
    random.seed(0)
    for index in (0, 2):
        frames, label = train[index]
        assert label == 1 and len(frames) == 4  # replaced by the readable video
    assert train.num_replaced >= 2
    val = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 4, '{:05d}.jpg', None,
                       random_shift=False)
    with pytest.raises(D.DataError, match='empty'):
        val[0]
    with pytest.raises(D.DataError, match='missing'):
        val[2]


def test_malformed_list_line_names_file_and_line(tmp_path):
    path = tmp_path / 'list.txt'
    path.write_text('a 10 1\nb 10 two\n')  # ('b ten 2' is the path 'b ten', label 2)
    with pytest.raises(D.DataError, match=r'list.txt:2'):
        D.parse_list_file(str(path))


def test_dataset_config_errors_and_custom_json(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*somethingv1"):
        get_dataset_config('nope', str(tmp_path))
    with pytest.raises(DatasetError, match='somethingv1/category.txt'):
        get_dataset_config('somethingv1', str(tmp_path))
    cfg = get_dataset_config('kinetics', str(tmp_path))
    assert cfg.num_class == 400 and cfg.image_tmpl == 'img_{:05d}.jpg'
    assert cfg.root_path == os.path.join(str(tmp_path), 'K400/img')

    (tmp_path / 'cats.txt').write_text('Swiping Left\nSwiping Right\nWaving\n')
    (tmp_path / 'mine.json').write_text(json.dumps({
        'categories': 'cats.txt', 'train_list': 't.txt', 'val_list': 'v.txt',
        'root_path': 'frames', 'image_tmpl': 'f{:04d}.png'}))
    cfg = get_dataset_config(str(tmp_path / 'mine.json'), 'ignored')
    assert cfg.num_class == 3 and cfg.mirror_map == {0: 1, 1: 0}
    assert cfg.root_path == os.path.join(str(tmp_path), 'frames')
    assert cfg.image_tmpl == 'f{:04d}.png'
