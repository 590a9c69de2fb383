"""Memory traffic and FLOPs of MAS-ResNet and the plain ResNet, from shapes; a GPU roofline.

Every operator a network runs is listed with the elements of each tensor it reads and writes
and its FLOPs (2 per multiply-add), computed from the layer shapes alone:

- ``plain_block_ops``: a bottleneck block's convs, BatchNorms, ReLUs, residual add (and its
  downsample), as eager PyTorch runs them (one kernel each, no conv-BN fusion);
- ``bias_ops``: the conv biases every MAS-Net conv carries (the release's); a CUDA conv adds
  its bias as a separate pass over the output in eager mode (CPU convs fuse it);
- ``mas_ops``: the MAM -> MSM -> TIM chain of one block, ``'eager'`` as ops/MASNet.py and
  ops/mas_fused.py compute it now (inference: buffer reuse; training: ``SelectInteract``), or
  ``'fused'``: the fewest full-size passes the data dependencies allow (forward: one read of
  the block's activation for the two reductions, then one read and one write for the chain;
  backward: one read of the gradient and the activation for the reductions, one more with
  the write of the input gradient);
- training adds the backward operators autograd runs (``train=True``).

``profiled_ops`` measures the same lists with torch.profiler (input shapes and strides, and
allocations), so the formulas are checked against what the code really runs
(tests/test_traffic.py). ``predict`` turns a list into GPU time with a roofline: every
operator takes max(FLOPs / peak, bytes / bandwidth), plus a fixed host cost per operator that
bounds eager PyTorch at small batches; tools/memory_traffic.py prints the tables.
"""
import math
from dataclasses import dataclass
from typing import Tuple

from archs.resnet import ARCH_LAYERS
from ops.errors import UserError

DTYPE_BYTES = {'fp32': 4, 'fp16': 2, 'bf16': 2}


@dataclass(frozen=True)
class Op:
    """One operator (one kernel): elements of each tensor read and written, FLOPs, and its
    kind: ``'conv'`` (cuDNN), ``'matmul'`` (cuBLAS) or ``'elementwise'`` (everything else)."""
    name: str
    reads: Tuple[int, ...]
    writes: Tuple[int, ...]
    flops: int = 0
    kind: str = 'elementwise'

    def elements(self):
        return sum(self.reads) + sum(self.writes)


def op(name, reads, writes, flops=0, kind='elementwise'):
    return Op(name, tuple(int(r) for r in reads), tuple(int(w) for w in writes), int(flops),
              kind)


def full_passes(ops, full, segments):
    """(reads, writes) of full-size ``(N*T, C, H, W)`` tensors (``full`` elements) and of
    their ``(N, T-1, ...)`` slices (counting (T-1)/T), in units of ``full``."""
    sizes = (full, full * (segments - 1) // segments)
    reads = sum(r for o in ops for r in o.reads if r in sizes) / full
    writes = sum(w for o in ops for w in o.writes if w in sizes) / full
    return reads, writes


# ---- shapes -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """A bottleneck block: stage (1-4), index in the stage, input channels, planes, stride,
    and the input's height and width."""
    stage: int
    index: int
    inplanes: int
    planes: int
    stride: int
    height: int
    width: int

    @property
    def label(self):
        return f'layer{self.stage}.{self.index}'


def conv_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def bottleneck_blocks(arch='resnet50', size=224):
    """The blocks of a bottleneck ResNet at an input of ``size`` x ``size``."""
    kind, layers = ARCH_LAYERS.get(arch, (None, None))
    if kind != 'bottleneck':
        raise UserError(f'--arch {arch}: the traffic account covers the bottleneck ResNets '
                        f'(resnet50, resnet101)')
    h = conv_out(conv_out(size, 7, 2, 3), 3, 2, 1)  # stem conv, max-pool
    inplanes, blocks = 64, []
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for index in range(count):
            stride = 2 if stage > 1 and index == 0 else 1
            blocks.append(Block(stage, index, inplanes, planes, stride, h, h))
            inplanes = planes * 4
            h = conv_out(h, 3, stride, 1)
    return blocks


# ---- operator lists ---------------------------------------------------------------------

def conv_ops(name, images, c_in, c_out, kernel, h_in, w_in, h_out, w_out, train,
             kind='conv'):
    """A Conv2d (or, ``kind='matmul'``, a Linear): forward, and with ``train`` its backward
    (one op: the input and weight gradients)."""
    x, y = images * c_in * h_in * w_in, images * c_out * h_out * w_out
    weight = c_out * c_in * kernel * kernel
    flops = 2 * y * c_in * kernel * kernel
    ops = [op(name, (x, weight), (y,), flops, kind)]
    if train:
        ops.append(op(f'{name} backward', (y, x, weight), (x, weight), 2 * flops, kind))
    return ops


def bn_ops(name, elements, channels, train, relu=False):
    """A BatchNorm (and an in-place ReLU); backward: BN's and the ReLU's gradients."""
    params = (channels,) * 4
    ops = [op(f'{name} batch count', (), ())] if train else []  # num_batches_tracked += 1
    ops.append(op(name, (elements, *params), (elements,), 2 * elements))
    if relu:
        ops.append(op(f'{name} relu', (elements,), (elements,), elements))
    if train:
        if relu:
            ops.append(op(f'{name} relu backward', (elements, elements), (elements,), elements))
        ops.append(op(f'{name} backward', (elements, elements, *params),
                      (elements, channels, channels), 6 * elements))
    return ops


def plain_block_ops(block, images, train=False):
    """The operators of a plain bottleneck block on ``images`` frames, in eager order."""
    b, p, h, w = block, block.planes, block.height, block.width
    ho, wo = conv_out(h, 3, b.stride, 1), conv_out(w, 3, b.stride, 1)
    out = images * 4 * p * ho * wo
    ops = conv_ops('conv1', images, b.inplanes, p, 1, h, w, h, w, train)
    ops += bn_ops('bn1', images * p * h * w, p, train, relu=True)
    ops += conv_ops('conv2', images, p, p, 3, h, w, ho, wo, train)
    ops += bn_ops('bn2', images * p * ho * wo, p, train, relu=True)
    ops += conv_ops('conv3', images, p, 4 * p, 1, ho, wo, ho, wo, train)
    ops += bn_ops('bn3', out, 4 * p, train)
    if block.index == 0:
        ops += conv_ops('downsample conv', images, b.inplanes, 4 * p, 1, h, w, ho, wo, train)
        ops += bn_ops('downsample bn', out, 4 * p, train)
    ops.append(op('residual add', (out, out), (out,), out))
    ops.append(op('relu', (out,), (out,), out))
    if train:
        ops.append(op('relu backward', (out, out), (out,), out))
        # autograd sums the input's gradients from conv1 and the identity / downsample path
        x = images * b.inplanes * h * w
        ops.append(op('input grad accumulation', (x, x), (x,), x))
    return ops


def bias_ops(block, images, train=False):
    """The conv biases of a MAS-Net block: one pass over each conv's output (CUDA, eager);
    backward: the bias gradient, a sum over the output's gradient."""
    b, p = block, block.planes
    ho, wo = conv_out(b.height, 3, b.stride, 1), conv_out(b.width, 3, b.stride, 1)
    outputs = [('conv1', images * p * b.height * b.width, p), ('conv2', images * p * ho * wo, p),
               ('conv3', images * 4 * p * ho * wo, 4 * p)]
    if block.index == 0:
        outputs.append(('downsample conv', images * 4 * p * ho * wo, 4 * p))
    ops = [op(f'{name} bias', (n, c), (n,), n) for name, n, c in outputs]
    if train:
        ops += [op(f'{name} bias backward', (n,), (c,), n) for name, n, c in outputs]
    return ops


def stem_head_ops(images, size, num_classes, train=False):
    """The stem (conv 7x7, BN, ReLU, max-pool) and the head (average pool, fc)."""
    h1 = conv_out(size, 7, 2, 3)
    h2 = conv_out(h1, 3, 2, 1)
    ops = conv_ops('stem conv', images, 3, 64, 7, size, size, h1, h1, train)
    ops += bn_ops('stem bn', images * 64 * h1 * h1, 64, train, relu=True)
    ops.append(op('max-pool', (images * 64 * h1 * h1,), (images * 64 * h2 * h2,)))
    h4 = h2 // 8
    features = images * 2048
    ops.append(op('average pool', (features * h4 * h4,), (features,), features * h4 * h4))
    ops += conv_ops('fc', images, 2048, num_classes, 1, 1, 1, 1, 1, train, 'matmul')
    if train:
        ops.append(op('max-pool backward', (images * 64 * h2 * h2, images * 64 * h1 * h1),
                      (images * 64 * h1 * h1,)))
        ops.append(op('average pool backward', (features,), (features * h4 * h4,)))
    return ops


def mas_ops(channels, height, width, clips, segments, train=False, variant='eager'):
    """The MAM -> MSM -> TIM chain of one MAS block on ``(clips * segments, channels, H, W)``.

    ``'eager'``: the operators ops/MASNet.py + ops/mas_fused.py run (small tensors included);
    ``'fused'``: the full-size work in the fewest passes (see the module docstring).
    """
    if variant not in ('eager', 'fused'):
        raise UserError(f"variant {variant!r}: choose 'eager' or 'fused'")
    n, t, c, hw = clips, segments, channels, height * width
    r = max(c // 64, 1)
    hidden, groups = c // 4, 4
    full, per_clip, ft = n * t * c * hw, n * c * hw, n * (t - 1) * c * hw  # F, M, F (T-1)/T
    red, red_t, red_m = n * t * r * hw, n * (t - 1) * r * hw, n * r * hw
    s1 = n * hidden * hw
    w_fc1, w_fc2 = hidden * (c // groups) * 9, 2 * c * (hidden // groups) * 9
    thin = 2 * full * r  # FLOPs of a C <-> C/64 1x1 conv over the clip

    small = []  # MAM's accumulation on C/64 channels, the means and MSM's selection
    small.append(op('MAM conv1 (bmm)', (r * c, full), (red,), thin, kind='matmul'))
    if train:  # BatchNorm's num_batches_tracked += 1
        small.append(op('MAM bn1 batch count', (), ()))
    small.append(op('MAM bn1', (red, r, r, r, r), (red,), 2 * red))
    small += [op('MAM alpha * b[t+1]', (red_t,), (red_t,), red_t),
              op('MAM b[t] + ...', (red_t, red_t), (red_t,), red_t),
              op('MAM / (1 + alpha)', (red_t,), (red_t,), red_t),
              op('MAM cat', (red_t, red_m), (red,)),
              op('mean over T of the reduced', (red,), (red_m,), red),
              op('MAM conv3 of the mean (bmm)', (r * c, red_m), (per_clip,), 2 * per_clip * r,
                 kind='matmul'),
              op('clip mean of x', (full,), (per_clip,), full),
              op('MSM motion + appearance', (per_clip, per_clip), (per_clip,), per_clip),
              op('MSM conv_fc1', (per_clip, w_fc1), (s1,), 2 * s1 * (c // groups) * 9,
                 kind='conv'),
              op('MSM bn_fc1 batch count', (), ())]
    small = small if train else small[:-1]
    small += [op('MSM bn_fc1', (s1, hidden, hidden, hidden, hidden), (s1,), 2 * s1),
              op('MSM relu', (s1,), (s1,), s1),
              op('MSM conv_fc2', (s1, w_fc2), (2 * per_clip,),
                 2 * 2 * per_clip * (hidden // groups) * 9, kind='conv'),
              op('MSM logit difference', (per_clip, per_clip), (per_clip,), per_clip),
              op('MSM sigmoid', (per_clip,), (per_clip,), 4 * per_clip)]
    if variant == 'fused':
        # the 1x1 conv and the clip mean of x in one read; the chain in one read and one write
        small[0] = op('MAM conv1 + clip mean of x (one read)', (r * c, full),
                      (red, per_clip), thin + full, kind='matmul')
        small = [o for o in small if o.name != 'clip mean of x']
        chain = [op('project + blend + TIM (one kernel)', (full, red, r * c, per_clip, 3 * c),
                    (full,), thin + 8 * full)]
        if not train:
            return small + chain
        backward = [
            op('chain backward: reductions (grad_w, taps, reduced, projection)',
               (full, full, red, r * c, per_clip, 3 * c), (per_clip, 3 * c, red, r * c),
               2 * thin + 14 * full),
            op('chain backward: input gradient (+ clip mean, MAM conv1)',
               (full, full, per_clip, red, r * c, per_clip), (full, r * c), 2 * thin + 6 * full)]
        return small + chain + _selection_backward(n, c, hw, r, hidden, groups, t) + backward

    k = (c,)  # one of TIM's taps, (C, 1, 1)
    # the same traffic in both modes: inference writes TIM's frame t into x's buffer
    chain = [op('MAM conv3 (bmm)', (c * r, red), (full,), thin, kind='matmul'),
             op('MSM blend (lerp into the motion)', (full, full, per_clip), (full,), 3 * full),
             op('TIM frame t', (full, *k), (full,), full),
             op('TIM + frame t-1', (ft, ft, *k), (ft,), 2 * ft),
             op('TIM + frame t+1', (ft, ft, *k), (ft,), 2 * ft)]
    if not train:
        return small + chain
    expanded = n * t * c * r  # a weight gradient per frame, before its sum
    backward = [  # SelectInteract.backward
        op('recompute motion (bmm)', (c * r, red), (full,), thin, kind='matmul'),
        op('motion - appearance', (full, full), (full,), full),
        op('recompute blend (addcmul)', (full, per_clip, full), (full,), 2 * full),
        op('taps grad t-1 (mul)', (ft, ft), (ft,), ft), op('taps grad t-1 (sum)', (ft,), k, ft),
        op('taps grad t (mul)', (full, full), (full,), full),
        op('taps grad t (sum)', (full,), k, full),
        op('taps grad t+1 (mul)', (ft, ft), (ft,), ft), op('taps grad t+1 (sum)', (ft,), k, ft),
        op('taps grad stack', (c, c, c), (3 * c,)),
        op('TIM transpose frame t', (full, *k), (full,), full),
        op('TIM transpose + t+1', (ft, ft, *k), (ft,), 2 * ft),
        op('TIM transpose + t-1', (ft, ft, *k), (ft,), 2 * ft),
        op('grad_w (mul)', (full, full), (full,), full),
        op('grad_w (sum over T)', (full,), (per_clip,), full),
        op('grad_motion (mul)', (full, per_clip), (full,), full),
        op('grad_appearance (sub_)', (full, full), (full,), full),
        op('grad reduced (bmm)', (c * r, full), (red,), thin, kind='matmul'),
        op('grad projection (bmm)', (full, red), (expanded,), thin, kind='matmul'),
        op('grad projection (sum)', (expanded,), (c * r,), expanded)]
    backward += _selection_backward(n, c, hw, r, hidden, groups, t)
    backward += [  # the clip mean of x, MAM's accumulation and conv1; the sums into x's grad
        op('clip mean of x backward (div)', (per_clip,), (full,), full),
        op('x grad accumulation (add)', (full, full), (full,), full),
        op('conv3-of-mean backward: input (bmm)', (c * r, per_clip), (red_m,),
           2 * per_clip * r, kind='matmul'),
        op('conv3-of-mean backward: weight (bmm)', (per_clip, red_m), (n * c * r,),
           2 * per_clip * r, kind='matmul'),
        op('conv3-of-mean backward: weight (sum)', (n * c * r,), (c * r,), n * c * r),
        op('conv3 weight grad accumulation', (c * r, c * r), (c * r,), c * r),
        op('mean over T backward (div)', (red_m,), (red,), red),
        op('reduced grad accumulation', (red, red), (red,), red),
        op('cat backward (slice)', (red_m,), (red,)),
        op('MAM / (1 + alpha) backward', (red_t,), (red_t,), red_t),
        op('MAM alpha * backward', (red_t,), (red_t,), red_t),
        op('slice backward b[t+1]', (red_t,), (red,)),
        op('reduced grad accumulation', (red, red), (red,), red),
        op('slice backward b[t]', (red_t,), (red,)),
        op('reduced grad accumulation', (red, red), (red,), red),
        op('MAM bn1 backward', (red, red, r, r, r, r, r), (red, r, r), 6 * red),
        op('MAM conv1 backward: input (bmm)', (c * r, red), (full,), thin, kind='matmul'),
        op('MAM conv1 backward: weight (bmm)', (red, full), (expanded,), thin, kind='matmul'),
        op('x grad accumulation (add_)', (full, full), (full,), full),
        op('MAM conv1 backward: weight (sum)', (expanded,), (c * r,), expanded)]
    return small + chain + backward


def _selection_backward(n, c, hw, r, hidden, groups, t):
    """Autograd's operators through MSM's selection: sigmoid, the logits, conv_fc2, the
    in-place ReLU and BatchNorm3d on a squeezed view, conv_fc1 (all per clip: 1/T size)."""
    per_clip, s1 = n * c * hw, n * hidden * hw
    w_fc1, w_fc2 = hidden * (c // groups) * 9, 2 * c * (hidden // groups) * 9
    conv2 = 2 * 2 * per_clip * (hidden // groups) * 9
    conv1 = 2 * s1 * (c // groups) * 9
    params = (hidden,) * 5
    return [
        op('sigmoid backward', (per_clip, per_clip), (per_clip,), 2 * per_clip),
        op('logit difference backward (neg)', (per_clip,), (per_clip,), per_clip),
        op('select backward (motion)', (per_clip,), (2 * per_clip,)),
        op('select backward (appearance)', (per_clip,), (2 * per_clip,)),
        op('logits grad accumulation', (2 * per_clip, 2 * per_clip), (2 * per_clip,),
           2 * per_clip),
        op('MSM conv_fc2 backward', (2 * per_clip, s1, w_fc2), (s1, w_fc2), 2 * conv2,
           kind='conv'),
        op('view backward (new_zeros)', (), (s1,)),
        op('view backward (copy_)', (s1,), (s1,)),
        op('in-place on a view (new_empty_strided)', (), (s1,)),
        op('in-place on a view (copy_)', (s1,), (s1,)),
        op('in-place on a view (clone)', (s1,), (s1,)),
        op('MSM relu backward', (s1, s1), (s1,), s1),
        op('in-place on a view (copy_ back)', (s1,), (s1,)),
        op('MSM bn_fc1 backward', (s1, s1, *params), (s1, hidden, hidden), 6 * s1),
        op('MSM conv_fc1 backward', (s1, per_clip, w_fc1), (per_clip, w_fc1), 2 * conv1,
           kind='conv')]


# ---- the profiler's account --------------------------------------------------------------

# operators that move no data (views, metadata) or only allocate
NO_DATA = {'aten::view', 'aten::reshape', 'aten::_reshape_alias', 'aten::expand', 'aten::slice',
           'aten::select', 'aten::unsqueeze', 'aten::squeeze', 'aten::flatten', 'aten::permute',
           'aten::t', 'aten::transpose', 'aten::unbind', 'aten::as_strided', 'aten::detach',
           'aten::alias', 'aten::contiguous', 'aten::to', 'aten::empty', 'aten::empty_like',
           'aten::empty_strided', 'aten::narrow', 'aten::expand_as', 'aten::resolve_conj',
           'aten::resolve_neg', 'aten::result_type', 'aten::lift_fresh', 'aten::view_as'}
ALLOCATING = {'aten::new_zeros', 'aten::new_empty_strided', 'aten::new_empty',
              'aten::zeros_like'}  # their tensor input is a template, not read
ELEMENT_BYTES = {'float': 4, 'double': 8, 'c10::Half': 2, 'c10::BFloat16': 2, 'long int': 8}


def stored_elements(shape, strides):
    """Elements a tensor of ``shape`` / ``strides`` occupies (broadcast dims, stride 0, once)."""
    return math.prod(size for size, stride in zip(shape, strides) if stride != 0)


def _tensor_inputs(event):
    """(elements, bytes per element) of each tensor input of a profiler event."""
    tensors = []
    for shape, strides, dtype in zip(event.structured_input_shapes,
                                     event.structured_input_strides, event.input_dtypes):
        if dtype == 'TensorList':
            tensors += [(stored_elements(s, st), 4) for s, st in zip(shape, strides)]
        elif dtype in ELEMENT_BYTES and shape:
            tensors.append((stored_elements(shape, strides), ELEMENT_BYTES[dtype]))
    return tensors


def profiled_ops(function):
    """Run ``function()`` (CPU tensors) under torch.profiler and list the operators it ran
    (the outermost ``aten::`` calls, views left out) as ``Op`` s measured from the profile.

    Reads: the elements of every tensor input (broadcast dims once). Writes: the first input
    of an in-place op (``..._``); for an op that allocates, what it allocated (profile_memory);
    otherwise the op wrote into its ``out=`` tensor, its last input (not read).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                 profile_memory=True) as prof:
        function()
    ops = []
    for event in prof.events():
        parent = event.cpu_parent
        if (not event.name.startswith('aten::') or event.name in NO_DATA
                or (parent is not None and parent.name.startswith('aten::'))):
            continue
        inputs = _tensor_inputs(event)
        reads = [n for n, _ in inputs]
        size = inputs[0][1] if inputs else 4
        if event.name in ALLOCATING:
            reads, writes = [], [event.cpu_memory_usage // size]
        elif event.name.endswith('_'):
            writes = reads[:1]
            if event.name == 'aten::copy_':
                reads = reads[1:]
        elif event.cpu_memory_usage > 0 or event.name in ('aten::cat', 'aten::stack'):
            writes = [event.cpu_memory_usage // size]
        else:
            writes, reads = reads[-1:], reads[:-1]
        ops.append(op(event.name, reads, writes))
    return ops


# ---- networks ----------------------------------------------------------------------------

def network_ops(masnet, clips=1, segments=8, size=224, train=False, variant='eager',
                arch='resnet50', num_classes=1000, conv_bias=True):
    """``[(section, [Op])]``: the stem and head, then every block, of MAS-ResNet (``masnet``)
    or the plain ResNet, for ``clips`` clips of ``segments`` frames of ``size`` px.
    ``conv_bias``: count MAS-Net's conv biases as separate passes (CUDA eager)."""
    images = clips * segments
    sections = [('stem + head', stem_head_ops(images, size, num_classes, train))]
    for block in bottleneck_blocks(arch, size):
        ops = plain_block_ops(block, images, train)
        if masnet:
            ops += bias_ops(block, images, train) if conv_bias else []
            ops += mas_ops(block.planes, block.height, block.width, clips, segments, train,
                           variant)
        sections.append((block.label, ops))
    return sections


def traffic(ops, dtype='bf16'):
    """(bytes moved, FLOPs, operators) of a list of ``Op``."""
    return (sum(o.elements() for o in ops) * DTYPE_BYTES[dtype], sum(o.flops for o in ops),
            len(ops))


# ---- the GPU roofline --------------------------------------------------------------------

@dataclass(frozen=True)
class GPU:
    """Peak memory bandwidth (bytes/s) and dense FLOP/s: fp16/bf16 tensor cores, TF32
    tensor cores, fp32 without tensor cores (vendors' data sheets, SXM parts)."""
    name: str
    bandwidth: float
    tensor16: float
    tf32: float
    fp32: float


GPUS = {'A100': GPU('A100 80GB SXM', 2.0e12, 312e12, 156e12, 19.5e12),
        'H100': GPU('H100 SXM', 3.35e12, 989e12, 495e12, 67e12),
        'H200': GPU('H200', 4.8e12, 989e12, 495e12, 67e12)}
DEFAULT_GPU = 'H100'
HOST_US = 6.0  # host time to issue one eager operator (Python + dispatcher + launch), us


def gpu_named(device_name):
    """The GPUS key for a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'H100'), or
    DEFAULT_GPU for a GPU not in the table."""
    return next((key for key in GPUS if key in device_name.upper()), DEFAULT_GPU)


def peak_flops(kind, gpu, dtype):
    """FLOP/s an operator of ``kind`` reaches at most: fp16/bf16 convs and matmuls on tensor
    cores; fp32 convs on TF32 tensor cores (cuDNN's default in PyTorch), fp32 matmuls
    without (torch.backends.cuda.matmul.allow_tf32 is off by default); the rest fp32."""
    if kind == 'elementwise':
        return gpu.fp32
    if dtype != 'fp32':
        return gpu.tensor16
    return gpu.tf32 if kind == 'conv' else gpu.fp32


def op_seconds(o, gpu, dtype):
    """Roofline time of one operator: max(FLOPs / peak, bytes / bandwidth)."""
    return max(o.flops / peak_flops(o.kind, gpu, dtype),
               o.elements() * DTYPE_BYTES[dtype] / gpu.bandwidth)


def run_seconds(ops, gpu, dtype, host_us=HOST_US):
    """Time of an eager run of ``ops``: the host issues an operator every ``host_us``; the GPU
    runs each in its roofline time, once issued and after the previous one."""
    issued = end = 0.0
    for o in ops:
        issued += host_us * 1e-6
        end = max(end, issued) + op_seconds(o, gpu, dtype)
    return end


def predict(gpu_key, dtype='bf16', clips=1, segments=8, size=224, train=False,
            host_us=HOST_US, arch='resnet50'):
    """Predicted seconds of the plain ResNet and of MAS-ResNet on a GPU of GPUS, and the
    MAS / plain ratios: a dict. ``eager``: as implemented (conv biases as separate passes);
    ``fused``: the fused chain, conv biases in the convs' epilogues."""
    gpu = GPUS[gpu_key]
    runs = {'plain': network_ops(False, clips, segments, size, train, arch=arch),
            'eager': network_ops(True, clips, segments, size, train, 'eager', arch),
            'fused': network_ops(True, clips, segments, size, train, 'fused', arch,
                                 conv_bias=False)}
    result = {'gpu': gpu.name, 'dtype': dtype, 'clips': clips, 'segments': segments,
              'size': size, 'train': train, 'host_us': host_us}
    for name, sections in runs.items():
        ops = [o for _, section in sections for o in section]
        moved, flops, count = traffic(ops, dtype)
        result[name] = {'seconds': run_seconds(ops, gpu, dtype, host_us),
                        'roofline_seconds': sum(op_seconds(o, gpu, dtype) for o in ops),
                        'bytes': moved, 'flops': flops, 'ops': count}
    for name in ('eager', 'fused'):
        result[f'{name}_ratio'] = result[name]['seconds'] / result['plain']['seconds']
        result[f'{name}_roofline_ratio'] = (result[name]['roofline_seconds']
                                            / result['plain']['roofline_seconds'])
    return result


# ---- per-block summary and the profiler check ------------------------------------------

def block_rows(clips=1, segments=8, size=224, train=False, dtype='bf16', arch='resnet50'):
    """Per block: label, channels and size of the MAS chain's activation, MB moved by the
    plain block, by MAS-Net's conv biases, by the MAS chain eager and fused, and the chain's
    full-size (reads, writes), eager and fused."""
    rows = []
    images = clips * segments
    for block in bottleneck_blocks(arch, size):
        shape = (block.planes, block.height, block.width, clips, segments, train)
        eager, fused = mas_ops(*shape, 'eager'), mas_ops(*shape, 'fused')
        full = images * block.planes * block.height * block.width
        moved = [traffic(ops, dtype)[0] / 1e6 for ops in (
            plain_block_ops(block, images, train), bias_ops(block, images, train), eager, fused)]
        rows.append({'block': block.label, 'channels': block.planes,
                     'size': f'{block.height}x{block.width}', 'plain_mb': moved[0],
                     'bias_mb': moved[1], 'eager_mb': moved[2], 'fused_mb': moved[3],
                     'eager_passes': full_passes(eager, full, segments),
                     'fused_passes': full_passes(fused, full, segments)})
    return rows


def profile_mas_block(planes=64, height=8, clips=2, segments=8, train=False, seed=0):
    """(formula ops, profiled ops, full size) of one MAS bottleneck block's MAM -> MSM -> TIM
    chain on a random ``(clips * segments, planes, height, height)`` activation (CPU)."""
    import torch

    from ops.MASNet import MASBottleneck, check_forms

    torch.manual_seed(seed)
    block = MASBottleneck(4 * planes, planes, num_segments=segments).train(train)
    check_forms(block)  # before the profile: its float64 checks are no part of the block
    x = torch.randn(clips * segments, planes, height, height, requires_grad=train)
    grad = torch.randn_like(x)

    def run():
        with torch.set_grad_enabled(train):
            out = block.temporal(x)  # (N*T, C, H, W)
            if train:
                out.backward(grad)

    full = x.numel()
    return mas_ops(planes, height, height, clips, segments, train), profiled_ops(run), full
