"""Data loaders that cannot hang or crash a stop (ops.dataset.make_loader): every installed
video backend decodes in forked loader workers, in main.py and test.py; a stalled loader ends
in one line naming the video; workers ignore the job's SIGTERM / SIGUSR1, and one that dies
during a stop is part of the stop. Every command that could hang runs under a timeout."""
import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

from ops import dataset as D
from ops import video_readers as V
from ops.preemption import PREEMPTED_EXIT, StopSignals
from tests.conftest import ROOT
from tests.test_video_readers import write_mp4

BACKENDS = tuple(b for b in V.VIDEO_BACKENDS[1:] if V.backend_available(b))
HARD_TIMEOUT = 300  # seconds a command of these tests may take before it counts as a hang


def _read_in_child(path, backend, queue):
    with V.open_reader(path, True, backend=backend) as reader:
        frames = reader.read([1, 5, 12])
    queue.put({i: f.sum() for i, f in frames.items()})


@pytest.mark.parametrize('backend', BACKENDS)
def test_a_forked_process_decodes_after_its_parent_did(tmp_path, backend):
    """A loader worker forks from a process that already decoded (the list's first video is
    probed before any loader): its reads must finish."""
    path = str(tmp_path / 'v.mp4')
    write_mp4(path, 16, 64, 48)
    with V.open_reader(path, True, backend=backend) as reader:
        expected = {i: f.sum() for i, f in reader.read([1, 5, 12]).items()}
    if backend == 'pyav':  # PyAV's shared converter used here too, as other code may do
        import av
        with av.open(path) as container:
            next(container.decode(video=0)).to_ndarray(format='bgr24')
    context = multiprocessing.get_context('fork')
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(path, backend, queue), daemon=True)
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f'{backend}: the forked reader hangs')
    assert child.exitcode == 0 and queue.get(timeout=5) == expected


@pytest.fixture(scope='module')
def mp4_dataset(tmp_path_factory):
    """A .json dataset of one 48-frame mp4 listed 4 times (2 classes), as in issue 28."""
    root = tmp_path_factory.mktemp('mp4data')
    os.makedirs(root / 'videos')
    write_mp4(root / 'videos' / 'v.mp4', 48, 64, 48)
    (root / 'category.txt').write_text('a\nb\n')
    for name in ('train.txt', 'val.txt'):
        (root / name).write_text(''.join(f'v.mp4 {i % 2}\n' for i in range(4)))
    (root / 'data.json').write_text(json.dumps(
        {'categories': 'category.txt', 'train_list': 'train.txt', 'val_list': 'val.txt',
         'root_path': 'videos', 'image_tmpl': '{:05d}.jpg', 'flip': False}))
    return root


def run_command(*args):
    """Run a command of the repository under HARD_TIMEOUT; returns (status, output)."""
    try:
        res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=HARD_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    except subprocess.TimeoutExpired:
        pytest.fail(f'{args[0]} hangs (no end in {HARD_TIMEOUT} s)')
    return res.returncode, res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.parametrize('backend', ('auto',) + BACKENDS)
def test_training_and_testing_with_workers_finish_with_every_backend(mp4_dataset, tmp_path,
                                                                     backend):
    # 'auto' runs the defaults a user meets first: -j 8, --video_backend auto (= PyAV)
    flags = [] if backend == 'auto' else ['-j', '2', '--video_backend', backend]
    out = str(tmp_path)
    status, output = run_command(
        'main.py', '--dataset', str(mp4_dataset / 'data.json'), '--arch', 'resnet10',
        '--num_segments', '8', '--input_size', '32', '--pretrain', 'none', '-b', '2',
        '--epochs', '1', '--root_log', out, '--root_checkpoint', out, '--store_name', 'run',
        *flags)
    assert status == 0 and 'Traceback' not in output, output[-3000:]
    assert re.search(r'^Epoch 0 val: .*Prec@1', output, re.M), output[-3000:]
    (weights,) = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files
                  if f == 'ckpt.best.pth.tar']
    status, output = run_command('test.py', '--dataset', str(mp4_dataset / 'data.json'),
                                 '--weights', weights, '--test_segments', '8',
                                 '--save_scores', '', *flags)
    assert status == 0 and 'Traceback' not in output, output[-3000:]
    assert re.search(r'Prec@1 [\d.]+', output), output[-3000:]


def _sleeping_read(reader, indices):
    time.sleep(60)  # far beyond the loader's timeout: a decoder that hangs


def _process_state(pid):
    """The state letter of process `pid` ('Z': a zombie), None once it is gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except OSError:
        return None


@pytest.mark.slow
def test_a_stalled_loader_ends_in_one_line_naming_the_video(mp4_dataset, monkeypatch):
    monkeypatch.setattr(V.OpenCVReader, 'read', _sleeping_read)  # the fork inherits it
    dataset = D.TSNDataSet(str(mp4_dataset / 'videos'), str(mp4_dataset / 'val.txt'), 4,
                           random_shift=False, video_backend='opencv')
    loader = D.make_loader(dataset, batch_size=2, workers=1, timeout=2)
    with pytest.raises(D.LoaderStalled) as stalled:
        next(iter(loader))
    line = str(stalled.value)
    assert '\n' not in line
    found = re.fullmatch(r"the data loader yielded no batch for 2 s \(--loader_timeout\): worker 0 "
                         r"\(pid (\d+)\) has been reading video '.*v\.mp4' \(opencv backend\) for "
                         r"\d+ s; .*", line)
    assert found, line
    pid = int(found.group(1))
    for _ in range(100):  # killed (it ignores the shutdown's SIGTERM), not left decoding
        if _process_state(pid) in (None, 'Z'):
            break
        time.sleep(0.1)
    assert _process_state(pid) in (None, 'Z')
    multiprocessing.active_children()  # reaps it; torch's SIGCHLD check must not fire now
    time.sleep(0.5)


class Items(torch.utils.data.Dataset):
    """Item i: (i, the pid of the process reading it); item `fatal` kills its worker (once the
    file `go` exists, if given)."""

    def __init__(self, count=12, fatal=None, pause=0.0, go=None):
        self.count, self.fatal, self.pause, self.go = count, fatal, pause, go

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if index == self.fatal:
            while self.go and not os.path.exists(self.go):
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.pause)
        return torch.tensor([index, os.getpid()])


OPENCV_AFTER_ITS_POOL = """
import cv2, numpy as np, torch
from ops import dataset as D
image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
for _ in range(3):  # the main process uses OpenCV's thread pool (e.g. predict.py's frames)
    cv2.resize(image, (700, 700))

class Resized(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.from_numpy(cv2.resize(image, (64, 64)))

batches = list(D.make_loader(Resized(), batch_size=2, workers=2, timeout=30))
print(len(batches), cv2.getNumThreads())
"""


def test_workers_use_opencv_after_the_main_process_used_its_pool():
    """OpenCV's setNumThreads in a forked worker whose parent had used OpenCV's pool waits
    forever for the parent's threads: make_loader sets it before the fork (a regression stalls:
    the watchdog's 30 s end the run, the subprocess timeout ends a hang)."""
    run = subprocess.run([sys.executable, '-c', OPENCV_AFTER_ITS_POOL], capture_output=True,
                         text=True, timeout=240, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ['2', '1']


def test_loader_workers_ignore_the_jobs_stop_signals():
    loader = D.make_loader(Items(pause=0.05), batch_size=2, workers=2)
    batches = iter(loader)
    first = next(batches)
    workers = _started_workers(loader, 2)
    assert os.getpid() not in workers
    for pid in workers:  # SLURM's signals to every process of the job (sent by another process)
        for sig in ('TERM', 'USR1'):
            subprocess.run(['kill', f'-{sig}', str(pid)], check=True, timeout=30)
    rest = torch.cat([first] + list(batches))
    assert rest[:, 0].tolist() == list(range(12)) and set(rest[:, 1].tolist()) == workers


def _started_workers(loader, count):
    """The pids of `loader`'s workers once `count` have noted theirs (a busy machine may hand
    over the first batch before the last worker has started)."""
    for _ in range(600):
        pids = {pid for pid in loader.board.pids[:] if pid}
        if len(pids) == count:
            return pids
        time.sleep(0.1)
    raise AssertionError(f'{count} workers did not start: {loader.board.pids[:]}')


def _wait_until_gone(pid):
    for _ in range(300):
        if _process_state(pid) in (None, 'Z'):
            return
        time.sleep(0.1)
    raise AssertionError(f'worker {pid} still runs')


def test_a_worker_dying_during_a_stop_is_part_of_the_stop(caplog, tmp_path):
    with pytest.raises((RuntimeError, ConnectionError, EOFError)):  # no stop pending: a crash
        list(D.make_loader(Items(fatal=5), batch_size=2, workers=2))
    stop = StopSignals(types.SimpleNamespace(distributed=False))
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.poll() == 'SIGTERM'
        with caplog.at_level(logging.INFO, logger='masnet.data'):
            with pytest.raises(SystemExit) as waiting:  # it dies while the loop waits for it
                list(D.make_loader(Items(fatal=5), batch_size=2, workers=2))
            go = tmp_path / 'go'
            loader = D.make_loader(Items(fatal=5, go=str(go)), batch_size=2, workers=2)
            batches = iter(loader)
            next(batches)
            # it dies while the loop computes: nothing raises there (the loop reaches the
            # stop's checkpoint first), the next batch ends the run
            go.write_text('')
            _wait_until_gone(loader.board.pids[0])
            time.sleep(0.5)  # the step that computes meanwhile
            with pytest.raises(SystemExit) as computing:
                next(batches)
    finally:
        stop.uninstall()
    assert waiting.value.code == computing.value.code == PREEMPTED_EXIT
    lines = [r.getMessage() for r in caplog.records if 'during the stop' in r.getMessage()]
    assert len(lines) == 2 and all(line.startswith('SIGTERM: a data loader worker ended')
                                   for line in lines), lines
