"""One command to check and measure this code base on a CUDA GPU machine; one JSON report.

    python tools/gpu_check.py --out outputs/gpu_check.json   # or: bash scripts/gpu_check.sh

On a machine with a CUDA GPU it runs, each step recorded in the report (an exception is
recorded and the next step runs):
  1. the model benchmark (tools/bench_model.py) on the GPU: fp32, AMP fp16, AMP bf16,
     channels_last, and compiled, MAS-ResNet-50 against a plain ResNet-50;
  2. a few training steps of MAS-ResNet-50 with DataParallel over the visible GPUs and with
     AMP + GradScaler: the losses must be finite and the scaler's scale must have been updated;
  3. main.py for one epoch on the synthetic dataset on the GPU, then test.py on its checkpoint;
  4. --sync_bn's SyncBatchNorm (CPUs cannot run it): MAS-ResNet-18 training steps in each eager
     form of the MAS block (fast, readable) with every BatchNorm, MSM's BatchNorm3d included,
     converted, in a one-process group, against the same model unconverted (the same batch
     statistics: outputs, gradients and running statistics must agree); with 2 GPUs or more,
     also main.py --sync_bn under torchrun (2 processes) for one epoch.
After the benchmark it prints the measured eager MAS / plain time ratios (fp32, AMP fp16, AMP
bf16) beside those tools/traffic.py predicts for the GPU (by its name; H100 for one it does not
know): docs/memory_traffic.md. Without CUDA it says so in one line and exits 0 (``--predict
[A100|H100|H200]``: then prints the predictions). Exits 1 when a step failed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from ops.cli import HelpFormatter
from ops.files import atomic_write
from ops.models import build_model
from tools import bench_model
from tools.traffic import DEFAULT_GPU, GPUS, gpu_named, predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BENCH_VARIANTS = {'fp32': {}, 'amp_fp16': {'amp': 'fp16'}, 'amp_bf16': {'amp': 'bf16'},
                  'channels_last': {'channels_last': True}, 'compiled': {'compile': True}}


def training_steps(steps=5, num_segments=8, size=224, clips_per_gpu=2):
    """DataParallel + AMP + GradScaler training steps on random clips: losses and scales."""
    gpus = torch.cuda.device_count()
    device = torch.device('cuda', 0)
    model = build_model(174, num_segments, 'MASNet', 'resnet50', pretrain='none').to(device)
    net = torch.nn.DataParallel(model, device_ids=list(range(gpus)))
    optimizer = torch.optim.SGD(model.get_optim_policies(), 0.01, momentum=0.9)
    scaler = torch.amp.GradScaler('cuda')
    criterion = torch.nn.CrossEntropyLoss()
    losses, scales = [], []
    for _ in range(steps):
        clips = torch.randn(clips_per_gpu * gpus, num_segments * 3, size, size, device=device)
        labels = torch.randint(0, 174, (clips.size(0),), device=device)
        with torch.autocast('cuda', dtype=torch.float16):
            loss = criterion(net(clips), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 20)
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
        scales.append(scaler.get_scale())
    finite = all(map(torch.isfinite, map(torch.tensor, losses)))
    return {'gpus': gpus, 'losses': losses, 'scales': scales, 'finite_losses': bool(finite),
            'ok': bool(finite) and len(scales) == steps}


def train_and_test(workdir):
    """main.py for one epoch on the synthetic dataset on the GPU, then test.py."""
    run = os.path.join(workdir, 'exp')
    common = ['--dataset', 'synthetic', '--dataset_path', os.path.join(workdir, 'data'),
              '--arch', 'resnet18', '--input_size', '112', '-j', '2']
    train = [sys.executable, 'main.py', *common, '--num_segments', '8', '--pretrain', 'none',
             '--epochs', '1', '-b', '16', '--lr_type', 'cos_lr', '--amp', '--store_name', 'gpu',
             '--root_log', run, '--root_checkpoint', run]
    result = {}
    start = time.time()
    done = subprocess.run(train, cwd=ROOT, capture_output=True, text=True)
    result['train'] = {'returncode': done.returncode, 'seconds': time.time() - start,
                       'tail': (done.stdout + done.stderr)[-1500:]}
    weights = os.path.join(run, 'synthetic', 'MASNet', 'resnet18', 'num_segments_8', 'gpu',
                           'checkpoint', 'ckpt.best.pth.tar')
    test = [sys.executable, 'test.py', *common, '--weights', weights, '--test_crops', '3',
            '--twice_sample', '--full_res', '--batch_size', '8', '--save_scores',
            os.path.join(workdir, 'score')]
    start = time.time()
    done = subprocess.run(test, cwd=ROOT, capture_output=True, text=True)
    result['test'] = {'returncode': done.returncode, 'seconds': time.time() - start,
                      'tail': (done.stdout + done.stderr)[-1500:]}
    result['ok'] = result['train']['returncode'] == 0 and result['test']['returncode'] == 0
    return result


def sync_bn_steps(workdir, size=112, num_segments=8, clips=4):
    """--sync_bn on CUDA: converted and plain BatchNorms agree in a one-process group, in
    every eager form of the MAS block; main.py --sync_bn under torchrun with 2+ GPUs."""
    import copy

    import torch.distributed as dist

    from ops.MASNet import set_form
    device = torch.device('cuda', 0)
    dist.init_process_group('nccl', init_method=f'file://{os.path.join(workdir, "pg")}',
                            rank=0, world_size=1)
    result = {}
    try:
        torch.manual_seed(0)
        plain = build_model(10, num_segments, 'MASNet', 'resnet18', pretrain='none',
                            input_size=size, dropout=0).to(device).train()
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
        result['sync_batchnorms'] = sum(isinstance(m, torch.nn.SyncBatchNorm)
                                        for m in synced.modules())
        x = torch.randn(clips, num_segments * 3, size, size, device=device)
        for form in ('fast', 'readable'):
            diffs = {}
            for name, model in (('plain', plain), ('synced', synced)):
                set_form(form, model)
                model.zero_grad(set_to_none=True)
                out = model(x)
                out.square().mean().backward()
                diffs[name] = (out.detach(), [p.grad for p in model.parameters()],
                               [b for n, b in model.named_buffers() if 'running' in n])
            (o1, g1, b1), (o2, g2, b2) = diffs['plain'], diffs['synced']
            result[form] = {
                'output': (o1 - o2).abs().max().item(),
                'grad': max(((a - b).abs().max() / (a.abs().max() + 1e-12)).item()
                            for a, b in zip(g1, g2) if a is not None),
                'running': max((a - b).abs().max().item() for a, b in zip(b1, b2))}
        agree = all(max(result[form].values()) < 1e-3 for form in ('fast', 'readable'))
        result['ok'] = result['sync_batchnorms'] > 0 and agree
    finally:
        dist.destroy_process_group()
    if torch.cuda.device_count() >= 2:
        run = os.path.join(workdir, 'exp')
        command = [sys.executable, 'tools/torchrun.py', '--nproc_per_node', '2', 'main.py',
                   '--dataset', 'synthetic', '--dataset_path', os.path.join(workdir, 'data'),
                   '--arch', 'resnet18', '--input_size', '112', '--pretrain', 'none',
                   '--epochs', '1', '-b', '8', '--sync_bn', '--store_name', 'sync_bn',
                   '--root_log', run, '--root_checkpoint', run]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        result['torchrun'] = {'returncode': done.returncode,
                              'tail': (done.stdout + done.stderr)[-1500:]}
        result['ok'] = result['ok'] and done.returncode == 0
    return result


# benchmark variant -> the dtype of the prediction
PREDICTED_VARIANTS = {'fp32': 'fp32', 'amp_fp16': 'fp16', 'amp_bf16': 'bf16'}


def traffic_comparison(report, gpu_key):
    """Measured (the benchmark's eager runs, in `report`) and predicted MAS / plain time
    ratios on the GPU `gpu_key` of tools.traffic.GPUS, one clip of 8 x 224 px as benchmarked:
    {variant: {mode: {'measured', 'predicted', 'roofline', 'fused'}}}; prints a line each."""
    comparison = {}
    for variant, dtype in PREDICTED_VARIANTS.items():
        bench = report.get(f'bench_{variant}', {})
        for mode, train in (('inference', False), ('train', True)):
            p = predict(gpu_key, dtype, clips=1, segments=8, size=224, train=train)
            measured = bench.get(mode, {}).get('masnet', {}).get('ratio')
            comparison.setdefault(variant, {})[mode] = {
                'measured': measured, 'predicted': p['eager_ratio'],
                'roofline': p['eager_roofline_ratio'], 'fused': p['fused_ratio']}
            shown = f'{measured:.2f}x' if measured is not None else 'n/a'
            print(f'gpu_check: {variant} {mode}, MAS / plain: measured {shown}, predicted for '
                  f'{gpu_key} {p["eager_ratio"]:.2f}x (roofline alone '
                  f'{p["eager_roofline_ratio"]:.2f}x, fused {p["fused_ratio"]:.2f}x)', flush=True)
    return comparison


def run_step(report, name, function, *args, **kwargs):
    print(f'gpu_check: {name} ...', flush=True)
    try:
        report[name] = function(*args, **kwargs)
    except Exception as exc:  # record it and go on with the next step
        report[name] = {'ok': False, 'error': f'{type(exc).__name__}: {exc}',
                        'traceback': traceback.format_exc()[-3000:]}


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=os.path.join('outputs', 'gpu_check.json'),
                        help='the JSON report')
    parser.add_argument('--repeats', type=int, default=15, help='benchmark rounds')
    parser.add_argument('--skip', nargs='*', default=[],
                        choices=['bench', 'train', 'test', 'sync_bn'],
                        help='steps to leave out')
    parser.add_argument('--predict', nargs='?', const=DEFAULT_GPU, choices=GPUS,
                        help='without a GPU: print the predicted ratios for this GPU')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print('gpu_check: no CUDA GPU on this machine: nothing to check')
        if args.predict:
            traffic_comparison({}, args.predict)
        return 0
    report = {'torch': torch.__version__, 'cuda': torch.version.cuda,
              'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    device = torch.device('cuda', 0)
    if 'bench' not in args.skip:
        for variant, options in BENCH_VARIANTS.items():
            run_step(report, f'bench_{variant}', bench_model.benchmark, 8, 224, args.repeats,
                     device, **options)
        run_step(report, 'traffic_prediction', traffic_comparison, report,
                 gpu_named(report['gpus'][0]))
    if 'train' not in args.skip:
        run_step(report, 'training_steps', training_steps)
    if 'test' not in args.skip:
        with tempfile.TemporaryDirectory() as workdir:
            run_step(report, 'train_and_test', train_and_test, workdir)
    if 'sync_bn' not in args.skip:
        with tempfile.TemporaryDirectory() as workdir:
            run_step(report, 'sync_bn', sync_bn_steps, workdir)
    with atomic_write(args.out, 'w') as f:
        json.dump(report, f, indent=2)
    failed = [name for name, value in report.items()
              if isinstance(value, dict) and value.get('ok') is False]
    print(f'gpu_check: report written to {args.out}; '
          + (f'failed: {", ".join(failed)}' if failed else 'every step passed'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
