"""Video files: the frame-reader seam and its backends, both list formats,
bounded memory, truncated videos, the video tools and test.py under torchrun."""
import logging
import os
import subprocess
import sys
import tracemalloc

import cv2
import numpy as np
import pytest
import torch

from ops import dataset as D
from ops import video_readers as V
from ops.dataset_config import DatasetError, get_dataset_config
from tests.conftest import ROOT, free_port
from tools import check_videos, extract_frames, gen_label

# the optional decoders where installed (decord has wheels for x86-64 only)
BACKENDS = tuple(b for b in V.VIDEO_BACKENDS[1:] if V.backend_available(b))
needs_pyav = pytest.mark.skipif(not V.backend_available('pyav'), reason='PyAV not installed')


def pattern(i, w=96, h=64):
    """Frame i: a gradient, a square moving 5 px a frame and a brightness step every frame."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.arange(w)[None, :] * 255 // w
    img[:, :, 1] = (i * 37) % 256
    x = (i * 5) % (w - 16)
    img[8:24, x:x + 16] = 255
    return img


def write_mp4(path, count, w=96, h=64):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 25, (w, h))
    for i in range(count):
        writer.write(pattern(i, w, h))
    writer.release()


def write_faststart_mp4(path, count, w=96, h=64):
    """An mp4 whose header (frame count) comes first, as streamed downloads are."""
    import av
    with av.open(str(path), 'w', options={'movflags': 'faststart'}) as container:
        stream = container.add_stream('mpeg4', rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, 'yuv420p'
        for i in range(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pattern(i, w, h), 'bgr24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def diff(a, b):
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope='module')
def video_tree(tmp_path_factory):
    """A class-per-folder tree of mp4 files, and its frames extracted by extract_frames.py."""
    root = tmp_path_factory.mktemp('videos')
    for split, cls, name, count in (('train', 'jumping', 'a', 40), ('train', 'running', 'b', 30),
                                    ('val', 'running', 'c', 20)):
        os.makedirs(root / 'tree' / split / cls, exist_ok=True)
        write_mp4(root / 'tree' / split / cls / f'{name}.mp4', count)
    os.makedirs(root / 'tree' / 'test')
    write_mp4(root / 'tree' / 'test' / 'd.mp4', 12)
    counts = extract_frames.extract_folder(str(root / 'tree'), str(root / 'frames'),
                                           short_side=0, num_workers=2)
    return root, counts


def test_extraction_keeps_the_class_folder_tree(video_tree):
    root, counts = video_tree
    assert counts == {'test/d.mp4': 12, 'train/jumping/a.mp4': 40, 'train/running/b.mp4': 30,
                      'val/running/c.mp4': 20}
    folder = root / 'frames' / 'train' / 'jumping' / 'a'
    assert sorted(os.listdir(folder)) == [extract_frames.DONE_MARKER] + [f'{i:05d}.jpg'
                                                                         for i in range(1, 41)]


@pytest.mark.parametrize('backend', BACKENDS)
def test_backends_read_the_frames_of_the_extracted_folder(video_tree, backend):
    root, _ = video_tree
    video = str(root / 'tree' / 'train' / 'jumping' / 'a.mp4')
    folder = V.FolderReader(str(root / 'frames' / 'train' / 'jumping' / 'a'), '{:05d}.jpg')
    indices = [37, 2, 15, 16, 40, 1, 16]  # unsorted, repeated, both ends, a backward jump
    with V.open_reader(video, True, backend=backend) as reader:
        assert reader.count() == 40
        got = reader.read(indices)
    reference = folder.read(range(1, 41))
    for i in indices:
        assert diff(got[i], reference[i]) < 3  # the same frame, up to JPEG loss
        neighbour = i + 1 if i < 40 else i - 1
        assert diff(got[i], reference[neighbour]) > 10  # an off-by-one would show


@needs_pyav
def test_pyav_seeks_far_frames_without_decoding_from_the_start(tmp_path):
    import av
    path = tmp_path / 'long.mp4'
    with av.open(str(path), 'w') as container:
        stream = container.add_stream('libx264', rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, 'yuv420p'
        stream.codec_context.gop_size = 25
        for i in range(200):
            for packet in stream.encode(av.VideoFrame.from_ndarray(pattern(i), 'bgr24')):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    decoded = []
    with V.open_reader(str(path), True, backend='pyav') as reader:
        seek = reader._seek

        def counting_seek(index):  # count the frames the decoder yields after each seek
            seek(index)
            frames = reader.decoder
            reader.decoder = (decoded.append(f.pts) or f for f in frames)
        reader._seek = counting_seek
        got = reader.read([20, 180, 190])
    with V.open_reader(str(path), True, backend='opencv') as reader:
        expected = reader.read([20, 180, 190])
    assert all(diff(got[i], expected[i]) < 1 for i in (20, 180, 190))
    assert len(decoded) < 60  # 1-20, then from the keyframe at 175 to 190: not 21-174


def test_both_list_formats_and_folders_without_count(video_tree):
    root, _ = video_tree
    lines = ['tree/train/jumping/a.mp4 40 0', 'tree/train/jumping/a.mp4 - 0',
             'tree/train/jumping/a.mp4 0', 'frames/train/jumping/a 1',
             'frames/train/jumping/a 40 0']
    list_file = root / 'mixed.txt'
    list_file.write_text('\n'.join(lines) + '\n')
    records = D.parse_list_file(str(list_file))
    assert [(r.num_frames, r.label) for r in records] == [(40, 0), (None, 0), (None, 0),
                                                          (None, 1), (40, 0)]
    ds = D.TSNDataSet(str(root), str(list_file), 4, '{:05d}.jpg', None, random_shift=False)
    clips = [ds[k][0] for k in range(len(records))]
    assert [r.num_frames for r in ds.video_list] == [40] * 5  # counted when the list is loaded
    for clip in clips[1:]:
        for a, b in zip(clips[0], clip):
            assert diff(a, b) < 3
    (root / 'bad.txt').write_text('a.mp4\n')
    with pytest.raises(D.DataError, match=r"bad.txt:1.*'<path> <label>'"):
        D.parse_list_file(str(root / 'bad.txt'))


@pytest.mark.parametrize('backend', BACKENDS)
def test_memory_is_bounded_by_the_sampled_frames(tmp_path, backend):
    from ops.gradcam import find_video
    path = tmp_path / 'long.mp4'
    write_mp4(path, 150, 320, 240)
    root, record = find_video(str(path), None)  # as CAM.py reads a video file: count unknown
    ds = D.TSNDataSet(root, None, 4, video_list=[record], random_shift=False, video_backend=backend)
    frame_bytes = 320 * 240 * 3
    tracemalloc.start()  # traces numpy-allocated frames (OpenCV's; PyAV's and decord's are not)
    try:
        frames, _ = ds[0]  # counts the video, then reads 4 frames
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frames) == 4 and record.num_frames == 150
    assert peak < 12 * frame_bytes  # the whole video would be 150 frames


@pytest.mark.parametrize('backend', BACKENDS)
def test_listed_count_beyond_the_video_uses_its_last_frame(tmp_path, caplog, backend):
    write_mp4(tmp_path / 'v.mp4', 20)
    (tmp_path / 'list.txt').write_text('v.mp4 40 0\n')
    ds = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 4, '{:05d}.jpg', None,
                      random_shift=False, video_backend=backend)
    with caplog.at_level(logging.WARNING, logger='masnet.data'):
        frames, _ = ds[0]  # frames 6, 16, 26, 36: the last two do not exist
    with V.open_reader(str(tmp_path / 'v.mp4'), True, backend='opencv') as reader:
        expected = reader.read([6, 16, 20])
    assert diff(frames[0], expected[6]) < 1 and diff(frames[1], expected[16]) < 1
    assert diff(frames[2], expected[20]) < 1 and diff(frames[3], expected[20]) < 1
    assert (f"video '{tmp_path / 'v.mp4'}' ({backend} backend) is listed with 40 frames (or its "
            f"container claims them) but holds 20: frame 20 stands in") in caplog.text
    assert 'using frame 20 instead' in caplog.text and 'using frame 21' not in caplog.text


def test_missing_backend_and_template_mismatch_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'decord', None)  # import decord -> ImportError
    with pytest.raises(D.DataError, match="--video_backend decord needs the 'decord' package"):
        D.TSNDataSet(str(tmp_path), None, 4, video_list=[], video_backend='decord')
    assert V.resolve_backend('auto') == ('pyav' if 'pyav' in BACKENDS else 'opencv')

    os.makedirs(tmp_path / 'v')
    for i in range(1, 5):
        cv2.imwrite(str(tmp_path / 'v' / f'{i:05d}.jpg'), pattern(i))
    (tmp_path / 'list.txt').write_text('v 4 0\n')
    train = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 4, 'img_{:05d}.jpg', None)
    with pytest.raises(D.TemplateError, match=r"'\{:05d\}.jpg' but the dataset's template is "
                                              r"'img_\{:05d\}.jpg'"):
        train[0]  # not replaced by another video in training: every video would fail


@needs_pyav
def test_extraction_flags_truncated_videos(tmp_path, capsys):
    os.makedirs(tmp_path / 'videos')
    write_faststart_mp4(tmp_path / 'videos' / 'full.mp4', 60)
    data = (tmp_path / 'videos' / 'full.mp4').read_bytes()
    (tmp_path / 'videos' / 'half.mp4').write_bytes(data[:len(data) // 2])
    counts = extract_frames.extract_folder(str(tmp_path / 'videos'), str(tmp_path / 'frames'),
                                           short_side=0, num_workers=1)
    assert counts['full.mp4'] == 60 and 0 < counts['half.mp4'] < 60
    assert 'half.mp4' in capsys.readouterr().err
    assert os.path.isfile(tmp_path / 'frames' / 'full' / extract_frames.DONE_MARKER)
    assert not os.path.isfile(tmp_path / 'frames' / 'half' / extract_frames.DONE_MARKER)
    extract_frames.extract_folder(str(tmp_path / 'videos'), str(tmp_path / 'frames'),
                                  short_side=0, num_workers=1, accept_truncated=True)
    assert os.path.isfile(tmp_path / 'frames' / 'half' / extract_frames.DONE_MARKER)

    assert extract_frames.frame_template(None, 'kinetics') == 'img_{:05d}.jpg'
    with pytest.raises(DatasetError, match=r"--tmpl '\{:05d\}.jpg' differs.*'img_\{:05d\}.jpg'"):
        extract_frames.frame_template('{:05d}.jpg', 'kinetics')

    # check_videos.py lists it, and a second run only checks what the first did not
    (tmp_path / 'list.txt').write_text('full.mp4 0\nhalf.mp4 1\nmissing.mp4 2\n')
    report = str(tmp_path / 'report.txt')
    statuses = check_videos.check_list(str(tmp_path / 'list.txt'), str(tmp_path / 'videos'),
                                       report, num_workers=2)
    assert statuses == {'full.mp4': 'ok', 'half.mp4': 'truncated', 'missing.mp4': 'unreadable'}
    with open(report, 'a') as f:
        f.write('ok extra.mp4 1 1 0\n')
    (tmp_path / 'list.txt').write_text('full.mp4 0\nhalf.mp4 1\nmissing.mp4 2\nextra.mp4 3\n')
    again = check_videos.check_list(str(tmp_path / 'list.txt'), str(tmp_path / 'videos'), report)
    assert again['extra.mp4'] == 'ok'  # taken from the report, not decoded (it does not exist)
    assert open(report).read().count('\n') == 4


def test_gen_label_for_class_folder_trees(video_tree, tmp_path):
    root, _ = video_tree
    categories, lines = gen_label.main(['folders', str(root / 'tree'), str(tmp_path / 'videos')])
    assert categories == ['jumping', 'running']
    assert lines == {'test.txt': ['test/d.mp4 -1'],
                     'train.txt': ['train/jumping/a.mp4 0', 'train/running/b.mp4 1'],
                     'val.txt': ['val/running/c.mp4 1']}
    records = D.parse_list_file(str(tmp_path / 'videos' / 'train.txt'))
    assert [(r.path, r.num_frames, r.label) for r in records] == [
        ('train/jumping/a.mp4', None, 0), ('train/running/b.mp4', None, 1)]

    # frame folders, numbered by a label map holding more classes
    (tmp_path / 'map.txt').write_text('archery\njumping\nrunning\n')
    categories, lines = gen_label.main(['folders', str(root / 'frames'), str(tmp_path / 'frames'),
                                        '--label_map', str(tmp_path / 'map.txt')])
    assert len(categories) == 3 and lines['val.txt'] == ['val/running/c 20 2']
    assert (tmp_path / 'frames' / 'category.txt').read_text() == 'archery\njumping\nrunning\n'


def test_kinetics_400_label_map_numbers_a_subset(tmp_path, capsys):
    names = open(gen_label.K400_LABEL_MAP).read().splitlines()
    assert len(names) == 400 == len(set(names)) and names == sorted(names)
    assert names[0] == 'abseiling' and names[-1] == 'zumba' and 'riding a bike' in names

    ann, frames, out = tmp_path / 'ann', tmp_path / 'frames', tmp_path / 'K400'
    os.makedirs(ann)
    header = 'label,youtube_id,time_start,time_end,split\n'
    (ann / 'train.csv').write_text(header + 'zumba,abc,10,20,train\nabseiling,xyz,0,10,train\n')
    (ann / 'validate.csv').write_text(header + 'zumba,qqq,5,15,val\n')
    (ann / 'test.csv').write_text('youtube_id,time_start,time_end,split\nttt,1,11,test\n')
    for name in ('abc_000010_000020', 'xyz_000000_000010', 'qqq_000005_000015',
                 'ttt_000001_000011'):
        os.makedirs(frames / name)
        cv2.imwrite(str(frames / name / 'img_00001.jpg'), pattern(0))
    gen_label.main(['kinetics', str(ann), str(frames), str(out)])
    assert '--label_map' in capsys.readouterr().err  # 2 classes: the way to 400 is named
    with pytest.raises(DatasetError, match=r'lists 2 classes, kinetics has 400.*\.json dataset'):
        get_dataset_config('kinetics', str(tmp_path))
    gen_label.main(['kinetics', str(ann), str(frames), str(out), '--label_map',
                    gen_label.K400_LABEL_MAP])
    assert (out / 'train_videofolder.txt').read_text() == ('abc_000010_000020 1 399\n'
                                                           'xyz_000000_000010 1 0\n')
    assert (out / 'test_videofolder.txt').read_text() == 'ttt_000001_000011 1 -1\n'
    cfg = get_dataset_config('kinetics', str(tmp_path))
    assert cfg.num_class == 400 and cfg.categories[399] == 'zumba'


@pytest.mark.distributed
def test_test_py_under_torchrun_gives_the_numbers_and_scores_of_one_process(tiny_data_root,
                                                                           tmp_path):
    from ops.checkpoint import save_checkpoint
    from ops.models import TemporalModel
    from ops.scores import load_scores
    from tests.conftest import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(TemporalModel(8, 4, 'MASNet', 'resnet10', input_size=32))
    weights = str(tmp_path / 'model.pth.tar')
    save_checkpoint({'epoch': 1, 'arch': 'resnet10', 'num_segments': 4,
                     'state_dict': model.state_dict()}, weights)
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def test_py(launcher, out):
        cmd = [*launcher, 'test.py', '--dataset', 'synthetic', '--dataset_path', tiny_data_root,
               '--weights', weights, '--test_segments', '4', '--input_size', '32', '-j', '0',
               '--batch_size', '3', '--twice_sample', '--save_scores', str(tmp_path / out)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
        lines = [line for line in (res.stdout + res.stderr).splitlines() if 'Prec@1' in line]
        files = [f for f in os.listdir(tmp_path / out) if f.endswith('.npz')]
        assert len(files) == 1
        return lines, load_scores(os.path.join(tmp_path, out, files[0]))

    one_lines, one = test_py([sys.executable], 'one')
    two_lines, two = test_py([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
                              '2', '--master_port', str(free_port())], 'two')
    assert two_lines == one_lines and len(one_lines) == 1  # logged once, same numbers
    assert list(two['video_ids']) == list(one['video_ids']) and len(one['video_ids']) == 16
    np.testing.assert_array_equal(two['labels'], one['labels'])
    np.testing.assert_allclose(two['scores'], one['scores'], rtol=1e-5, atol=1e-6)
