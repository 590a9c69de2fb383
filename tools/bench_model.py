"""Speed of MAS-ResNet-50 against a plain ResNet-50, measured in one process.

    python tools/bench_model.py                    # 8 x 3 x 224 x 224, eval + training step
    python tools/bench_model.py --size 112 --repeats 3

Three networks on the same 8 frames: a plain ResNet-50 (torchvision's resnet50 when
torchvision is installed, otherwise archs/'s copy of its exact structure: no conv biases, no
temporal modules), MAS-ResNet-50 as implemented in ops/MASNet.py, and the
same MAS-ResNet-50 computed the release's way (ops/reference.py: Conv3d over one time step,
avg_pool3d, permute + Conv1d). Runs are interleaved and the ratios are medians over rounds
of per-round ratios, so they are robust to the machine's load. Peak memory of a training step is measured in a
fresh subprocess per network (peak resident set growth on Linux CPUs, max_memory_allocated on GPU).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from archs.resnet import PLAIN_BLOCKS, build_resnet  # noqa: E402
from ops.reference import ReleaseStyleModel  # noqa: E402
from ops.models import TemporalModel  # noqa: E402

NETWORKS = ('plain', 'masnet', 'release')


def plain_resnet50():
    """torchvision's resnet50 when torchvision is installed, else the same structure from archs/."""
    try:
        from torchvision.models import resnet50
    except ImportError:
        return build_resnet('resnet50', PLAIN_BLOCKS, bias=False)
    return resnet50()


def build(name, num_segments):
    if name == 'plain':
        return plain_resnet50()
    model = TemporalModel(1000, num_segments, 'MASNet', 'resnet50', dropout=0, pretrain='none')
    return model if name == 'masnet' else ReleaseStyleModel(model)


def make_input(name, num_segments, size, device):
    if name == 'plain':
        return torch.randn(num_segments, 3, size, size, device=device)  # (T, 3, H, W)
    return torch.randn(1, num_segments * 3, size, size, device=device)  # (1, T*3, H, W)


def step(model, x, train):
    if train:
        model(x).sum().backward()
    else:
        with torch.no_grad():
            model(x)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_networks(num_segments, size, repeats, train, device):
    """Seconds per forward (or forward + backward) of each network: {name: [per round]}.

    The networks run in turn within each round, so a round's ratios compare runs made under
    the same machine load."""
    models = {n: build(n, num_segments).to(device).train(train) for n in NETWORKS}
    inputs = {n: make_input(n, num_segments, size, device) for n in NETWORKS}
    times = {n: [] for n in NETWORKS}
    for n in NETWORKS:  # warm-up
        step(models[n], inputs[n], train)
    for _ in range(repeats):
        for n in NETWORKS:
            sync(device)
            start = time.perf_counter()
            step(models[n], inputs[n], train)
            sync(device)
            times[n].append(time.perf_counter() - start)
    return times


def summarize(times):
    """Median time of each network and median over rounds of its time / the plain time."""
    medians = {n: statistics.median(t) for n, t in times.items()}
    ratios = {n: statistics.median(a / b for a, b in zip(t, times['plain'])) for n, t in times.items()}
    return medians, ratios


def peak_memory(name, num_segments, size, device):
    """Memory taken by one training step of `name`, in MiB (run in this fresh process)."""
    model = build(name, num_segments).to(device).train()
    x = make_input(name, num_segments, size, device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(model, x, True)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    reset_peak_rss()
    base = rss_kib('VmRSS')
    step(model, x, True)
    return (rss_kib('VmHWM') - base) / 1024


def reset_peak_rss():
    """Reset the process's peak resident set (Linux); a child's peak starts at its parent's."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def rss_kib(field):
    """VmRSS (current) or VmHWM (peak since reset) of this process, in KiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num_segments', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--memory_of', choices=NETWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.num_segments, args.size, device)))
        return

    baseline = type(plain_resnet50()).__module__
    print(f'baseline: {baseline}; {args.num_segments} x 3 x {args.size} x {args.size}, {device}, '
          f'{torch.get_num_threads()} threads, median of {args.repeats}')
    for train in (False, True):
        times, ratios = summarize(time_networks(args.num_segments, args.size, args.repeats,
                                                train, device))
        label = 'train step (fwd+bwd)' if train else 'inference (eval)'
        print(f'{label}: plain ResNet-50 {times["plain"] * 1000:.0f} ms | '
              f'MAS-ResNet-50 {times["masnet"] * 1000:.0f} ms ({ratios["masnet"]:.2f}x) | '
              f'release-style {times["release"] * 1000:.0f} ms ({ratios["release"]:.2f}x)')
    memory = {}
    for name in NETWORKS:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), '--memory_of', name,
                              '--num_segments', str(args.num_segments), '--size', str(args.size),
                              '--device', args.device], capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print('peak memory of a training step: ' +
          ' | '.join(f'{n} {m:.0f} MiB' for n, m in memory.items()))


if __name__ == '__main__':
    main()
