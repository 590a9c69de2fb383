"""One training epoch and one validation pass, on any device / process layout."""
import contextlib
import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Tuple

import torch

from ops.errors import UserError
from ops.logs import progress
from ops.meters import AverageMeter, accuracy, throughput
from ops.runtime import all_reduce_sum, restore_rng_state

logger = logging.getLogger('masnet')


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite (without a gradient scaler to absorb it)."""


@dataclass
class TrainStep:
    """One optimiser step on a batch given as micro-batches (--accumulate): forward (autocast
    with `amp`) and backward of each, gradient clipping to the global norm `clip_gradient`
    (0: off) once, update through the GradScaler."""
    model: torch.nn.Module
    criterion: Callable
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: bool = False
    clip_gradient: float = 0.0

    def __call__(self, micro_batches, epoch, iteration):
        """The step on `micro_batches`, a list of (clips (n_i, T*3, H, W), labels (n_i,)).

        Each micro-batch's mean loss is weighted n_i / n (n = sum n_i) before its backward, so
        the summed gradients are those of the mean loss over the n clips, as one batch of n
        (or DDP over processes holding the micro-batches) gives; under DDP only the last
        backward all-reduces (no_sync). Returns (output (n, num_class), the weighted loss).
        """
        total = sum(labels.size(0) for _, labels in micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        outputs, losses = [], []
        for k, (clips, labels) in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            syncs = last or not hasattr(self.model, 'no_sync')
            with contextlib.nullcontext() if syncs else self.model.no_sync():
                with torch.autocast(device_type=clips.device.type, enabled=self.amp):
                    output = self.model(clips)  # (n_i, num_class)
                    loss = self.criterion(output, labels)
                if not torch.isfinite(loss) and not self.scaler.is_enabled():
                    # stop before the update: the checkpoint of the last epoch stays the good one
                    raise TrainingDiverged(f'training diverged: the loss is {loss.item()} at '
                                           f'epoch {epoch}, iteration {iteration}; resume from '
                                           f'the last checkpoint with a lower --lr or a '
                                           f'--clip-gradient')
                if len(micro_batches) > 1:
                    loss = loss * (labels.size(0) / total)
                self.scaler.scale(loss).backward()
            outputs.append(output.detach())
            losses.append(loss.detach())
        if self.clip_gradient:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_gradient)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if len(micro_batches) == 1:
            return outputs[0], losses[0]
        return torch.cat(outputs), torch.stack(losses).sum()


def optimiser_steps(batches, accumulate):
    """The loader's micro-batches grouped `accumulate` at a time: the lists of one optimiser
    step each (the last one shorter when the epoch's micro-batches do not divide)."""
    batches = iter(batches)
    return iter(lambda: list(itertools.islice(batches, accumulate)), [])


def train_one_epoch(step: TrainStep, loader, runtime, epoch: int, set_lr: Callable[[float], float],
                    print_freq: int = 20, progress_state=None, after_iteration=None,
                    accumulate: int = 1) -> Tuple[float, float, float]:
    """Train for one epoch; returns (loss, top1, top5) averaged over all processes.

    An iteration is one optimiser step: `accumulate` micro-batches of the loader (TrainStep).
    set_lr: called before every step with the fractional epoch (epoch + iterations done /
    iterations of the epoch); it sets the optimiser's lr and returns it (ops.optim).
    print_freq: log a line every that many iterations.
    progress_state: the 'progress' entry of a mid-epoch checkpoint, to finish its epoch: the
    loader already skips its `clips` (ops.preemption.ResumableSampler), the iterations count on
    from its `iteration`, the RNGs continue from its states and rank 0's meters from its
    (all-process) sums.
    after_iteration: called as after_iteration(done, clips, sums) after every iteration, with
    the iterations and this process's clips done in this epoch and its meter sums
    (meter_sums); it may write a checkpoint and end the run (ops.preemption.Preempted).
    """
    batch_time, data_time = AverageMeter(), AverageMeter()
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    step.model.train()
    device = runtime.device
    # iter() draws the workers' base seed from torch's RNG: before the RNG states are restored
    steps = optimiser_steps(loader, accumulate)
    first, clips_done = 0, 0
    if progress_state is not None:
        first, clips_done = progress_state['iteration'], progress_state['clips']
        restore_rng_state(progress_state['rng'], device)
        if runtime.is_main:
            loss_sum, count, top1_sum, top5_sum = progress_state['meters']
            losses.sum, losses.count, top1.sum, top5.sum = loss_sum, count, top1_sum, top5_sum
            top1.count = top5.count = count
    steps_left = math.ceil(len(loader) / accumulate)
    total = first + steps_left
    end = start = time.time()
    seen = 0  # clips this process trained in this call (a resumed epoch counts from its resume)
    bar = progress(steps, enabled=runtime.is_main, desc=f'train {epoch}', leave=False,
                   total=total, initial=first)
    # one report of the running loss / top-1: the bar on a terminal, the print-freq lines in
    # a log file (and on the console when there is no bar)
    for i, micro_batches in enumerate(bar, start=first):
        data_time.update(time.time() - end)
        lr = set_lr(epoch + i / total)
        micro_batches = [(clips.to(device, non_blocking=True),  # (n_i, T*3, H, W)
                          labels.to(device, non_blocking=True)) for clips, labels in micro_batches]
        output, loss = step(micro_batches, epoch, i)
        labels = torch.cat([labels for _, labels in micro_batches])

        prec1, prec5 = accuracy(output.detach().float(), labels, topk=(1, 5))
        n = labels.size(0)
        seen += n
        losses.update(loss.item(), n)
        top1.update(prec1, n)
        top5.update(prec5, n)
        batch_time.update(time.time() - end)
        end = time.time()
        bar.set_postfix(loss=f'{losses.avg:.3f}', top1=f'{top1.avg:.1f}')
        if i % print_freq == 0:
            logger.info(f'Epoch: [{epoch}][{i}/{total}], lr: {lr:.5f}\t'
                        f'Time {batch_time.val:.3f} ({batch_time.avg:.3f})\t'
                        f'Data {data_time.val:.3f} ({data_time.avg:.3f})\t'
                        f'Loss {losses.val:.4f} ({losses.avg:.4f})\t'
                        f'Prec@1 {top1.val:.3f} ({top1.avg:.3f})\t'
                        f'Prec@5 {top5.val:.3f} ({top5.avg:.3f})\t'
                        + throughput(seen, start, steps_left * n, runtime.world_size),
                        extra={'console': bar.disable})
        if after_iteration is not None:
            after_iteration(i + 1, clips_done + seen, meter_sums(losses, top1, top5))
    rate = throughput(seen, start, world_size=runtime.world_size)
    logger.info(f'Epoch: [{epoch}] trained {rate}')
    return _reduce_meters(losses, top1, top5, runtime)


def meter_sums(losses, top1, top5):
    """[loss sum, clip count, top-1 sum, top-5 sum]: what a mid-epoch checkpoint keeps of an
    epoch's meters (summed over the processes)."""
    return [losses.sum, losses.count, top1.sum, top5.sum]


@torch.no_grad()
def validate(model, loader, criterion, runtime, desc: str = 'val') -> Tuple[float, float, float]:
    """Evaluate single-view clips; returns (loss, top1, top5) over the whole (sharded) set."""
    losses, top1, top5 = AverageMeter(), AverageMeter(), AverageMeter()
    model.eval()
    device = runtime.device
    start = time.time()
    for clips, labels in progress(loader, enabled=runtime.is_main, desc=desc, leave=False):
        clips = clips.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        output = model(clips).float()  # (N, num_class)
        loss = criterion(output, labels)
        prec1, prec5 = accuracy(output, labels, topk=(1, 5))
        n = labels.size(0)
        losses.update(loss.item(), n)
        top1.update(prec1, n)
        top5.update(prec5, n)
    logger.info(f'{desc}: evaluated '
                f'{throughput(losses.count, start, world_size=runtime.world_size)}')
    return _reduce_meters(losses, top1, top5, runtime)


def _reduce_meters(losses, top1, top5, runtime):
    """Exact averages over all processes from each process's sums and counts."""
    sums = all_reduce_sum([losses.sum, top1.sum, top5.sum, losses.count], runtime)
    count = max(sums[3], 1)
    return sums[0] / count, sums[1] / count, sums[2] / count
