"""Speed and memory of MAS-ResNet-50 against a plain ResNet-50, measured in one process.

    python tools/bench_model.py                    # 8 x 3 x 224 x 224: every form,
                                                   # inference + training step, 15 rounds
    python tools/bench_model.py --modes eager --profile   # + where MAS-Net's extra time goes
    python tools/bench_model.py --modes eager autograd    # + the hand-written backward's worth
    python tools/bench_model.py --size 112 --repeats 3 --modes eager
    python tools/bench_model.py --device cuda --amp bf16 --channels_last

Networks on the same 8 frames: a plain ResNet-50 (torchvision's resnet50 when torchvision is
installed, otherwise archs/'s copy of its exact structure: no conv biases, no temporal modules)
and MAS-ResNet-50 in the forms of ops/MASNet.py: ``masnet`` (the default form, ``'fast'``),
``regional`` (the block form ``'compiled'``: only the element-wise core is torch.compile'd),
``autograd`` (the fast form with plain autograd through its blend and TIM instead of the
hand-written backward of ``SelectInteract``), the release's operations
(tools/release_formulation.py: Conv3d over one time step, avg_pool3d, permute + Conv1d), and
``compiled``: the whole MAS-ResNet-50 torch.compile'd, against the whole plain network
compiled. Every mode but ``compiled`` runs eager networks. Runs are interleaved and the
ratios are medians over rounds of per-round ratios, so they are robust to the machine's load.
Peak memory of a training step (the second: the first compiles, where something does) is
measured in a fresh subprocess per network: max_memory_allocated on GPUs; on Linux CPUs the
growth of the peak resident set, with glibc told to return every freed block above 64 KiB to
the system at once (MALLOC_MMAP_THRESHOLD_), so that the peak counts live tensors, not blocks
the allocator kept. ``--profile`` prints, per operator, the self time MAS-ResNet-50 spends
beyond the plain network (eager, torch.profiler).
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from archs.resnet import PLAIN_BLOCKS, build_resnet
from ops.cli import HelpFormatter
from ops.files import atomic_write
from ops.MASNet import check_forms, fast_temporal, set_form
from ops.models import build_model
from ops.runtime import to_channels_last
from tools.release_formulation import ReleaseStyleModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NETWORKS = ('plain', 'masnet', 'release')  # --modes eager; 'regional', 'autograd' join them
EXTRA_NETWORKS = ('regional', 'autograd')
LABELS = {'masnet': 'MAS-ResNet-50 fast', 'regional': 'MAS-ResNet-50 regional',
          'autograd': 'MAS-ResNet-50 fast, plain autograd', 'release': 'release-style eager',
          'compiled': 'MAS-ResNet-50 compiled'}


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
    model = build_model(1000, num_segments, 'MASNet', 'resnet50', pretrain='none', dropout=0)
    if name == 'regional':
        return set_form('compiled', model)
    if name == 'autograd':
        return with_plain_autograd(check_forms(set_form('fast', model)))
    return ReleaseStyleModel(model) if name == 'release' else set_form('fast', model)


def with_plain_autograd(model):
    """`model` whose MAS blocks train with autograd through the fast form's own blend and TIM
    (``MSM.blend``, ``TIM.interact``) instead of ``SelectInteract``'s hand-written backward."""
    for block in model.modules():
        if hasattr(block, 'TIM'):
            block.temporal = plain_autograd_temporal(block)
    return model


def plain_autograd_temporal(block):
    def core(appearance, reduced, projection, w_motion, taps, channels_last):
        motion = block.MAM.project(reduced, channels_last)  # (N*T, C, H, W)
        return block.TIM.interact(block.MSM.blend(motion, appearance, w_motion))

    def temporal(x):
        return fast_temporal(block.MAM, block.MSM, block.TIM, x,
                             core if torch.is_grad_enabled() else None)
    return temporal


def make_input(name, num_segments, size, device):
    if name == 'plain':
        return torch.randn(num_segments, 3, size, size, device=device)  # (T, 3, H, W)
    return torch.randn(1, num_segments * 3, size, size, device=device)  # (1, T*3, H, W)


AMP_DTYPES = {'none': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def step(model, x, train, amp=None):
    """One forward (eval) or forward + backward (train), autocast to `amp` (a dtype) if given."""
    autocast = (torch.autocast(device_type=x.device.type, dtype=amp) if amp is not None
                else contextlib.nullcontext())
    with autocast:
        if train:
            model(x).float().sum().backward()
        else:
            with torch.no_grad():
                model(x)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def prepare(model, x, channels_last=False, compile=False):
    """The model (and input) in channels_last memory format and / or torch.compile'd."""
    if channels_last:
        to_channels_last(model)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model, x


def time_networks(num_segments, size, repeats, train, device, networks=NETWORKS, amp=None,
                  channels_last=False, compile=False):
    """Seconds per forward (or forward + backward) of each network: ({name: [per round]},
    {name: seconds of the warm-up step, compilation included}).

    The networks run in turn within each round, so a round's ratios compare runs made under
    the same machine load."""
    models, inputs, warmup = {}, {}, {}
    for n in networks:
        models[n], inputs[n] = prepare(build(n, num_segments).to(device).train(train),
                                       make_input(n, num_segments, size, device),
                                       channels_last, compile)
    for n in networks:  # warm-up (compiles)
        sync(device)
        start = time.perf_counter()
        step(models[n], inputs[n], train, amp)
        sync(device)
        warmup[n] = time.perf_counter() - start
    times = {n: [] for n in networks}
    for _ in range(repeats):
        for n in networks:
            sync(device)
            start = time.perf_counter()
            step(models[n], inputs[n], train, amp)
            sync(device)
            times[n].append(time.perf_counter() - start)
    return times, warmup


def summarize(times):
    """Median time of each network, median over rounds of its time / the plain time, and the
    spread (min, max) of those per-round ratios."""
    medians = {n: statistics.median(t) for n, t in times.items()}
    per_round = {n: [a / b for a, b in zip(t, times['plain'])] for n, t in times.items()}
    ratios = {n: statistics.median(r) for n, r in per_round.items()}
    spread = {n: (min(r), max(r)) for n, r in per_round.items()}
    return medians, ratios, spread


# glibc: serve every block over 64 KiB by mmap and unmap it when freed (see the docstring)
MEMORY_ENV = {'MALLOC_MMAP_THRESHOLD_': '65536'}


def peak_memory(name, num_segments, size, device):
    """Memory taken by one training step of `name`, in MiB (run in this fresh process)."""
    model = build(name, num_segments).to(device).train()
    x = make_input(name, num_segments, size, device)
    step(model, x, True)  # compiles, for the regional form
    model.zero_grad(set_to_none=True)
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


def benchmark(num_segments=8, size=224, repeats=5, device=torch.device('cpu'), amp='none',
              channels_last=False, compile=False, extra=()):
    """Inference and training-step times and ratios to the plain ResNet-50, as a dict.

    Compiled runs compare the compiled MAS-ResNet-50 with the compiled plain ResNet-50 (the
    release-style network is left out); eager runs add the `extra` networks (EXTRA_NETWORKS)."""
    networks = ('plain', 'masnet') if compile else NETWORKS + tuple(extra)
    results = {'num_segments': num_segments, 'size': size, 'device': str(device), 'amp': amp,
               'channels_last': channels_last, 'compile': compile, 'repeats': repeats}
    for train in (False, True):
        times, warmup = time_networks(num_segments, size, repeats, train, device, networks,
                                      AMP_DTYPES[amp], channels_last, compile)
        medians, ratios, spread = summarize(times)
        results['train' if train else 'inference'] = {
            n: {'ms': medians[n] * 1000, 'ratio': ratios[n], 'ratio_spread': spread[n],
                'first_step_s': warmup[n]} for n in networks}
    return results


def operator_self_ms(name, num_segments, size, device, train, steps=3):
    """Self time per operator of one step of `name` (eager), in ms: {operator: ms}."""
    from torch.profiler import profile
    model = build(name, num_segments).to(device).train(train)
    x = make_input(name, num_segments, size, device)
    for _ in range(2):
        step(model, x, train)
    with profile() as prof:
        for _ in range(steps):
            step(model, x, train)
        sync(device)
    return {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}


def extra_time_profile(num_segments, size, device, rows=12):
    """Operators MAS-ResNet-50 spends the most time on beyond the plain ResNet-50:
    {'inference'|'train': [(operator, plain ms, MAS ms), ...]}, largest difference first."""
    profiles = {}
    for key, train in (('inference', False), ('train', True)):
        plain, mas = (operator_self_ms(n, num_segments, size, device, train)
                      for n in ('plain', 'masnet'))
        table = [(op, plain.get(op, 0.0), mas.get(op, 0.0)) for op in set(plain) | set(mas)]
        table.sort(key=lambda row: row[1] - row[2])
        profiles[key] = table[:rows]
    return profiles


def measure_memory(args):
    """Peak training-step memory of each network, MiB, each in a fresh subprocess."""
    memory = {}
    for name in NETWORKS + extra_networks(args.modes):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), '--memory_of', name,
                              '--num_segments', str(args.num_segments), '--size', str(args.size),
                              '--device', args.device], env={**os.environ, **MEMORY_ENV},
                             capture_output=True, text=True, check=True)
        memory[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return memory


def extra_networks(modes):
    """The networks of EXTRA_NETWORKS that `modes` (--modes) ask for."""
    return tuple(name for name in EXTRA_NETWORKS if name in modes)


def print_table(results):
    """One row per form: median ratio to the plain network (lowest-highest round) for
    inference and a training step, peak training memory ratio, first (compiling) step."""
    rows = []
    memory = results.get('train_peak_memory_mib', {})
    for mode in ('eager', 'compiled'):
        if mode not in results:
            continue
        inference, train = results[mode]['inference'], results[mode]['train']
        plain = 'plain ResNet-50' + (' compiled' if mode == 'compiled' else '')
        rows.append((plain, f'{inference["plain"]["ms"]:.0f} ms', f'{train["plain"]["ms"]:.0f} ms',
                     f'{memory["plain"]:.0f} MiB' if memory and mode == 'eager' else '',
                     first_steps(inference['plain'], train['plain'], mode == 'compiled')))
        for name in inference:
            if name == 'plain':
                continue
            label = LABELS['compiled' if mode == 'compiled' else name]
            rows.append((label, ratio_cell(inference[name]), ratio_cell(train[name]),
                         f'{memory[name] / memory["plain"]:.3f}x' if name in memory and
                         mode == 'eager' else '',
                         first_steps(inference[name], train[name],
                                     mode == 'compiled' or name == 'regional')))
    header = ('form', 'inference', 'train step', 'train memory', 'first step inf/train')
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def ratio_cell(row):
    low, high = row['ratio_spread']
    return f'{row["ratio"]:.3f}x ({low:.2f}-{high:.2f})'


def first_steps(inference, train, compiles):
    """The first step's seconds (compilation included) where the form compiles."""
    return f'{inference["first_step_s"]:.1f} s / {train["first_step_s"]:.1f} s' if compiles else ''


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--num_segments', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=15, help='timed rounds (medians over them)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--modes', nargs='+', default=['eager', 'regional', 'compiled'],
                        choices=['eager', 'regional', 'autograd', 'compiled'],
                        help='eager networks; regional: also MAS-ResNet-50 with its blocks\' '
                             'element-wise core compiled (MASNET_FORM=compiled), in the same '
                             'rounds; autograd: also the fast form trained with plain autograd '
                             'instead of its hand-written backward; compiled: both whole '
                             'networks torch.compile\'d (the first, compiling step is reported '
                             'apart)')
    parser.add_argument('--amp', default='none', choices=AMP_DTYPES,
                        help='autocast dtype (fp16: GPUs; bf16: GPUs and CPUs)')
    parser.add_argument('--channels_last', action='store_true', help='NHWC memory format')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch.set_num_threads (default: torch\'s); 1 steadies ratios on a '
                             'loaded machine, where OpenMP regions wait on descheduled threads')
    parser.add_argument('--no_memory', action='store_true', help='skip the peak-memory runs')
    parser.add_argument('--profile', action='store_true',
                        help='also print the operators behind MAS-Net\'s extra time (eager)')
    parser.add_argument('--json', default=None, help='also write the results to this file')
    parser.add_argument('--memory_of', choices=NETWORKS + EXTRA_NETWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args.num_segments, args.size, device)))
        return None

    baseline = type(plain_resnet50()).__module__
    options = ', '.join(o for o, on in ((f'amp {args.amp}', args.amp != 'none'),
                                        ('channels_last', args.channels_last)) if on) or 'fp32'
    print(f'baseline: {baseline}; {args.num_segments} x 3 x {args.size} x {args.size}, {device}, '
          f'{torch.get_num_threads()} threads, {options}, medians of {args.repeats} rounds')
    results = {}
    for mode in ('eager', 'compiled'):
        if mode in args.modes or (mode == 'eager' and extra_networks(args.modes)):
            results[mode] = benchmark(args.num_segments, args.size, args.repeats, device,
                                      args.amp, args.channels_last, compile=mode == 'compiled',
                                      extra=extra_networks(args.modes))
    if not args.no_memory:
        results['train_peak_memory_mib'] = measure_memory(args)
    print_table(results)
    if args.profile:
        results['extra_time_profile'] = extra_time_profile(args.num_segments, args.size, device)
        for key, table in results['extra_time_profile'].items():
            print(f'eager {key}, self ms per step beyond the plain network (plain -> MAS-Net):')
            for op, plain_ms, mas_ms in table:
                print(f'  {mas_ms - plain_ms:+8.1f}  {op} ({plain_ms:.1f} -> {mas_ms:.1f})')
    if args.json:
        with atomic_write(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
