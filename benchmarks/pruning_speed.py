"""How much pruning at initialization costs over the passes it cannot avoid, measured side by side in one process.

Run it (the numbers in `benchmarks/results/cpu.json` and on the docs' Performance page come from this command):

    OMP_NUM_THREADS=1 python benchmarks/pruning_speed.py --threads 1 --repeats 3 --other-models resnet50 --out benchmarks/results/cpu.json

(32 minutes on the 2-core machine of the results; `--other-models resnet50` runs the methods other than FORCE and
`force_keep` on ResNet-50 only, the model where the per-weight work weighs most),

and `python benchmarks/pruning_speed.py --quick` for a smoke run of a few seconds (what `tests/test_benchmark.py` runs).

What is measured (every ratio has its two sides timed alternately in this process, ABAB..., after one untimed warm-up
of each side, and is the median of the method's times over the median of the floor's times):

1. **Overhead over the floor.** `prune_at_init(method, steps=T, batches_per_step=B)` against the work no implementation
   can skip: T x B forward + `loss.backward()` passes of the same dense model on the same batches, on the same device,
   in the same mode (`saliency_mode(model, bn_mode)`: dropout off, BatchNorm in `bn_mode`), with every parameter's
   gradient computed, as a training step does. One-shot `snip` and `grasp` are timed against B passes (GRASP's
   Hessian-gradient product costs a second, double backward: expect 2-3x). Data-free `synflow` is timed against its own
   floor: T forward + backward passes of one all-ones input through a float64 copy of the model. `force_keep` is FORCE
   with the masked weights theta * c kept for the backward pass (`force_edu.speed._RECOMPUTE = False`) instead of
   recomputed there, the default: the other side of a time/memory trade-off.
2. **Memory.** Peak memory growth of `prune_at_init` over that of one dense forward + backward, each in a fresh
   subprocess (the median of `--mem-repeats` processes), over a baseline taken after the model and the batches are built
   (CPU: the peak resident set size, reset through `/proc/self/clear_refs` and read from `VmHWM`; GPU:
   `torch.cuda.max_memory_allocated`). On CPU each is measured twice: with glibc's default allocator (`mem_ratio`), and
   "live" (`mem_ratio_live`) with `MALLOC_MMAP_THRESHOLD_=1048576` on both sides, where every allocation over 1 MB is
   its own mapping, returned on free, so that the peak counts the tensors alive at once rather than what glibc keeps.
3. **Training.** Seconds per epoch of a pruned learner with `ForceCallback` over the same learner without it, in one
   run, `--train-epochs` epochs each after one warm-up epoch (the one-off pruning at `before_fit` is in the warm-up, not
   in the epoch time), for fastai's `vision_learner` ResNet-18 on the digits at 64 px and for `force_edu.sweep.small_vgg`
   on 2,560 Fashion-MNIST images (`--train-models`). Since issue 17 the pruned learner trains plain weights: the callback
   zeroes the pruned gradients after each backward pass and the pruned weights after each step (two passes over the
   kept-index list per step, no multiply in the forward or backward pass). Each epoch is timed three ways: wall seconds
   (`ratio`), CPU seconds of the process (`ratio_cpu`: one thread, so other jobs on the machine move it much less), and
   the seconds spent inside the two zeroing calls (`mask_s`, `mask_fraction` = their median over a dense epoch's: the
   cost of the mechanism itself, measured directly). `--only-training` runs this part alone:

       OMP_NUM_THREADS=1 python benchmarks/pruning_speed.py --threads 1 --only-training --out benchmarks/results/training_cpu.json

4. **Scaling.** FORCE's time as T doubles (one model), and as the model grows (the FORCE rows).
5. **Per weight and step.** For `force` and `force_keep` on each model: the overhead over the floor in nanoseconds per
   prunable weight and step, the budget the 1.10 target allows (0.10 x the floor's time per step / m), and the **eager
   minimum** (`eager_minimum`): the per-weight work of a step that no implementation made of PyTorch operations can skip,
   each part timed in this process as one operation per layer at its fastest (preallocated, in place) on the model's own
   weights: theta * c (twice when recomputed, the default; once for `force_keep`), |theta * g|, and one comparison of
   every score into the boolean mask. The top-k's search for the threshold is not in it, so it is a lower bound:
   `eager_min_ratio` is the ratio FORCE would reach if that search were free.

Models: `vgg19` is the usual CIFAR variant of VGG19-BN (torchvision's `vgg19_bn().features`, then
`AdaptiveAvgPool2d(1)` and `Linear(512, 10)`: torchvision's own 25088->4096 classifier is meant for 224 px inputs);
`resnet50` and `resnet18` are torchvision's with `num_classes=10`, fed 3x32x32 inputs unchanged (CIFAR size); all three
get Gaussian inputs with random labels (the content of a batch does not change the cost of a dense pass).
`resnet18_learner` is fastai's `vision_learner(digits_dls(size=64), resnet18, pretrained=False)` on real 64x64 digits.
`tiny` is a three-layer CNN on 3x16x16 for `--quick`.

Where the time goes (cProfile and torch.profiler, FORCE, ResNet-50 at CIFAR size, batch 64, T=5, 1 thread, idle machine;
23.5M prunable weights; a dense pass is 0.57-0.60 s):

- The first round (an earlier session) found the global top-k (`kthvalue` over all scores, a bool `sum`, an
  `isnan().any()`, a tie search that always ran) costing as much as a pass, and replaced it by a sample bracket:
  `benchmarks/topk_speed.py`, 4-5x faster, same masks. That left 0.29 s a step over the floor on this idle machine
  (ratio 1.51 at T=5): the masked copy `theta * c` with a boolean c (PyTorch converts bool to float 5x slower than
  bytes: 0.09 s), `(theta * grad).abs_()` into new tensors (0.04 s), `torch.cat` of the saliencies into a 94 MB vector
  (0.04 s: a fresh mapping, page-faulted in), the top-k over it (0.1 s), a `div_` by the batch count even when it is 1.
- Now (`force_edu.speed.fast_topk_mask`, `force_edu.speed.FastMaskedLoss.grads`, `force_edu.methods._progressive`):
  the saliency |theta * grad| is computed in place in the gradients by the top-k's own pass (`fast_topk_mask(grads, k,
  scale=theta)`), which reads the layers where they are, 64K scores at a time (no concatenation); the masks go into one
  reused boolean buffer; `theta * c` reads c as bytes, piece by piece. A step now costs ~0.18 s over a dense pass:
  - the top-k with the saliency: 0.10 s. Per 64K piece: `mul_` + `abs_`, `ge` into the mask, `gt`, a count, a `sum`
    (NaN check) and the `nonzero` of the scores inside the bracket (0.02 s of the 0.10: every piece has some); PyTorch's
    comparisons into booleans run at ~0.4 ns an entry on one core, 4x slower than a multiply; Python ~0.03 s;
  - running on masked weights: +0.06-0.08 s a step over the same pass on theta. A plain `theta.clone()` costs about
    as much as `theta * c` here (the layers read weights that were just written, not theta, which stays in cache
    between passes); recomputing `theta * c` in the backward pass instead of keeping it adds 0.01-0.02 s.
- So the overhead per step is 8-10 ns per prunable weight (0.11 s for ResNet-18's 11.2M, 0.10 s for the learner's 11.7M,
  0.18 s for VGG19's 20.0M and for ResNet-50's 23.5M): a few passes over m floats. Its weight next to a pass depends on the pass: small at
  64 px or for VGG19's wide 32 px layers, large for ResNet-50 and ResNet-18 at 32 px.
- A third round (this file's `eager_minimum` and these notes) looked for what was left, on the real gradients of a
  FORCE run on ResNet-50 (a top-k costs 0.14 s there at four steps spread over T = 20; the masked pass 0.055 s over a dense one),
  each variant timed in shuffled order against the current code; none is committed:
  - `torch.compile` (inductor, CPU) of the fused pass (|g * theta|, the comparisons, the counts): 4x *slower* than
    eager on 2.4M scores (its boolean stores), after 4-17 s of compiling; without the boolean outputs it fuses well.
  - Reusing one buffer for the masked weights instead of a new tensor per layer: -4 ms a step (0.6%): allocation is
    not what the masked pass costs; the multiplies are (0.021 s each for 23.5M weights, into a preallocated tensor).
  - Comparisons into int32 or float and then bytes (PyTorch's comparisons into `bool` are not vectorised: 28 us per
    64K piece, against 7-13 us into float or int32), the inside of the bracket found 8 bytes at a time, `index_select`
    instead of indexing, the count from the finished mask: up to 2x faster per piece in isolation, but 0.145-0.19 s
    against 0.144 s per top-k in situ (each needs more operations, and a piece's work is a dozen operations of ~5-40 us).
  - Pieces of 32K, 128K or 256K scores instead of 64K: 0.141-0.146 s, flat.
  - With glibc's trimming and mapping thresholds raised (`MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_`), FORCE's
    ratio on ResNet-50 is unchanged (1.33 and 1.33, T = 20): page faults are not the cost either.
  What is left is the number of PyTorch operations over all m weights a step needs, each at ~0.2-1.4 ns an entry.
  The eager minimum (item 5) puts a floor under it, measured; closing the rest would take one fused native kernel for
  the top-k's pass (C++ or Triton), which this package does not ship.

Results (`benchmarks/results/cpu.json`, 2 Xeon cores, 1 thread, load ~0.7 at the start; the library is the same as in
the run before this one, which gave the numbers in brackets: the spread between runs is a few hundredths, and the
floor of one row differs from another's by up to 3% in one run):

- FORCE over its 20 passes: VGG19 1.17 (1.16), ResNet-50 1.34 (1.31), resnet18 learner (64 px) 1.15 (1.20);
  `force_keep` 1.19, 1.27, 1.13; iter_snip 1.36, grasp_it 1.36, SNIP 1.19 (ResNet-50). The 1.10 target is **not met**.
- Per weight and step (item 5): FORCE's overhead is 9.5 / 8.6 / 6.8 ns (VGG19 / ResNet-50 / learner); the 1.10 target
  allows 5.7 / 2.5 / 4.5 ns; the eager minimum is 5.1 / 5.0 / 5.3 ns (theta * c 0.027 / 0.030 / 0.016 s, twice;
  |theta * g| 0.024 / 0.028 / 0.014 s; the comparison 0.025 / 0.029 / 0.016 s), which alone would give 1.09 / 1.20 /
  1.12. So on ResNet-50 and on the learner no implementation made of PyTorch operations reaches 1.10 on this CPU, even
  with a free top-k; on VGG19 the top-k's search would have to cost 0.6 ns a weight, where it costs ~4 ns. Keeping the
  masked weights (`force_keep`) would lower the minimum to 1.07 / 1.15 / 1.09, for 1.4-1.6x the memory.
- GRASP 4.7x one pass: its gradient (1 pass), then Hg (a forward and a double backward, ~3 passes), and the top-k.
- SynFlow 3.2x its floor: the floor is one float64 sample (0.09 s a step), the per-weight float64 work dominates.
- Memory, FORCE (default allocator / live): VGG19 1.43 / 1.17, ResNet-50 1.25 / 1.26, learner 1.23 / 1.19 (the run
  before: 1.27 / 1.16, 1.21 / 1.25, 1.18 / 1.19; target 1.25): one boolean mask and one layer's recomputed weight on
  top of a dense pass; what glibc keeps after a free moves the default-allocator column by up to 0.16 between runs
  (VGG19). `force_keep`: 1.42 / 1.43, 1.54 / 1.63, 1.31 / 1.38 (the masked copies, 94 MB for ResNet-50). iter_snip and
  grasp_it 1.44-1.45 / 1.37 (two masks: c_t is their constraint), SNIP 1.12 / 0.97, GRASP 2.9 (the double backward's
  graph), SynFlow 3.5 (a float64 copy of every parameter and buffer, and float64 gradients).
- Training with `ForceCallback` (in `cpu.json`, still with `torch.nn.utils.prune`): 1.063 s/epoch ratio in this run;
  1.036 and 1.057 in the two runs before. `torch.nn.utils.prune` multiplied weight_orig by the mask at every forward
  and back-propagated through it. The training overhead with plain weights (issue 17) is in `training_cpu.json`; see
  the Performance page.
- Scaling: linear in T (0.275-0.288 s a step for T = 5...80 on ResNet-18 at 32 px, one timing each), and, per step,
  linear in the number of weights m, not in the cost of a pass.

Threads: `--threads 1` on a 2-core machine shared with other jobs: with 2 OpenMP threads and a load of ~8, a ResNet-50
pass took 12-14 s against 1.4 s with one thread (OpenMP barriers wait on descheduled threads). The thread count is
printed and stored with the results.
"""
from __future__ import annotations
import gc, json, math, os, platform, statistics, subprocess, sys, time, warnings
from collections import OrderedDict
from pathlib import Path

warnings.filterwarnings('ignore', message=r'.*torch\.jit\.script.*deprecated', category=FutureWarning)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from fastcore.script import call_parse

HERE = Path(__file__).resolve().parent
METHOD_NAMES = ('force', 'iter_snip', 'grasp_it', 'synflow', 'snip', 'grasp', 'force_keep')
# `force_keep`: FORCE with the masked weights theta * c kept for the backward pass instead of recomputed there
# (`force_edu.speed._RECOMPUTE = False`): the other side of the time/memory trade-off, measured, not defaulted
LIVE_ENV = {'MALLOC_MMAP_THRESHOLD_': str(2**20)}   # glibc: every allocation over 1 MB is its own mapping, unmapped on free

def _base(method:str) -> str: return 'force' if method == 'force_keep' else method
MODEL_NAMES = ('vgg19', 'resnet50', 'resnet18', 'resnet18_learner', 'tiny')

# ---------------------------------------------------------------------------------------------------------- models
def vgg19_cifar(num_classes:int=10) -> nn.Module:
    "The CIFAR variant of VGG19-BN: torchvision's `vgg19_bn().features`, global average pooling, one `Linear(512, n)`."
    from torchvision.models import vgg19_bn
    return nn.Sequential(OrderedDict(features=vgg19_bn().features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                     classifier=nn.Linear(512, num_classes)))

def tiny_cnn(num_classes:int=10) -> nn.Module:
    "A three-layer CNN for smoke runs."
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

def _digits_batches(size, bs, n, device):
    "`n` training batches of the digits at `size` px, as plain tensors (fastai's subclasses unwrapped)."
    from force_edu.data import digits_dls
    from force_edu.methods import repeat_batches
    dls = digits_dls(size=size, bs=bs, device=device)
    return dls, [tuple(t.as_subclass(Tensor) for t in b) for b in repeat_batches(dls.train, n)]

def build(name:str, batch_size:int, n_batches:int, device:str, seed:int=0):
    "`(model, batches, input_shape)` for benchmark model `name`, the model in train mode on `device`."
    torch.manual_seed(seed)
    if name == 'resnet18_learner':
        from fastai.vision.learner import vision_learner
        from torchvision.models import resnet18
        dls, batches = _digits_batches(64, batch_size, n_batches, device)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = vision_learner(dls, resnet18, pretrained=False).model
        return model.to(device), batches, (3, 64, 64)
    if name == 'vgg19': model, shape = vgg19_cifar(), (3, 32, 32)
    elif name == 'resnet50':
        from torchvision.models import resnet50
        model, shape = resnet50(num_classes=10), (3, 32, 32)
    elif name == 'resnet18':
        from torchvision.models import resnet18
        model, shape = resnet18(num_classes=10), (3, 32, 32)
    elif name == 'tiny': model, shape = tiny_cnn(), (3, 16, 16)
    else: raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn((batch_size,) + shape, generator=g).to(device),
                torch.randint(0, 10, (batch_size,), generator=g).to(device)) for _ in range(n_batches)]
    return model.to(device), batches, shape

def n_params(model) -> int:
    from force_edu.masks import prunable_layers
    return sum(l.weight.numel() for l in prunable_layers(model).values())

# ---------------------------------------------------------------------------------------------------------- the two sides
def _sync(device):
    if str(device).startswith('cuda'): torch.cuda.synchronize()

def dense_passes(model, batches, bn_mode='eval', loss_func=F.cross_entropy):
    "The floor: forward + `loss.backward()` (all parameter gradients) on each batch, in the mode saliencies use."
    from force_edu.sensitivity import saliency_mode
    with saliency_mode(model, bn_mode), torch.enable_grad():
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            loss_func(model(x), y).backward()
    model.zero_grad(set_to_none=True)

def synflow_floor(model64, input_shape, steps, device):
    "SynFlow's floor: `steps` forward + backward passes of one all-ones float64 input through a float64 model."
    x = torch.ones((1,) + tuple(input_shape), dtype=torch.float64, device=device)
    from force_edu.sensitivity import saliency_mode
    with saliency_mode(model64, 'eval'), torch.enable_grad():
        for _ in range(steps):
            model64.zero_grad(set_to_none=True)
            model64(x).sum().backward()
    model64.zero_grad(set_to_none=True)

def _prune(model, batches, method, steps, bpe, sparsity, bn_mode, input_shape):
    from force_edu.methods import prune_at_init, get_method
    from force_edu import speed as fast
    keep, method = method == 'force_keep', _base(method)
    meth, old = get_method(method), fast._RECOMPUTE
    fast._RECOMPUTE = not keep
    try:
        if not meth.uses_data:
            return prune_at_init(model, None, sparsity, method, steps=steps, bn_mode=bn_mode, input_shape=input_shape)
        if not meth.iterative: steps = 1
        return prune_at_init(model, batches, sparsity, method, steps=steps, batches_per_step=bpe, bn_mode=bn_mode)
    finally: fast._RECOMPUTE = old

def floor_batches(method, batches, steps, bpe):
    "The batches `method` consumes: T x B for the iterative methods, B for the one-shot ones."
    from force_edu.methods import get_method
    return batches[:(steps if get_method(_base(method)).iterative else 1) * bpe]

def _timed(f, device):
    gc.collect(); _sync(device)
    t = time.perf_counter(); f(); _sync(device)
    return time.perf_counter() - t

def side_by_side(a, b, repeats:int, device) -> tuple[list[float], list[float]]:
    "Time `a` and `b` alternately (a b, b a, a b, ...) after one untimed warm-up of each; the lists of seconds."
    a(); b()
    ta, tb = [], []
    for r in range(repeats):
        if r % 2 == 0: ta.append(_timed(a, device)); tb.append(_timed(b, device))
        else: tb.append(_timed(b, device)); ta.append(_timed(a, device))
    return ta, tb

def _median(xs): return statistics.median(xs) if xs else None

TARGET = 1.10   # the issue's time target: a FORCE run within 10% of its dense passes

def eager_minimum(model, device, repeats:int=5) -> dict:
    """Seconds of the per-weight work of one FORCE step that no implementation made of PyTorch operations can skip, each
    part timed as one operation per layer at its fastest (into preallocated tensors, in place), on `model`'s own weights:
    theta * c (the masked weights: once for the forward pass, and once more when recomputed in the backward pass, the
    default), the saliency |theta * g| (a multiply and an `abs_`), and one comparison of every score with a threshold
    into the boolean mask c_{t+1}. Finding the threshold (the top-k) is not in it: this is a lower bound, not an estimate."""
    from force_edu.masks import prunable_layers
    theta = [l.weight.detach() for l in prunable_layers(model).values()]
    gen = torch.Generator(device=device).manual_seed(0)
    g = [torch.randn(t.shape, generator=gen, device=device, dtype=t.dtype) * 1e-3 for t in theta]   # values do not change the cost
    c = [(torch.rand(t.shape, generator=gen, device=device) < 0.5).view(torch.uint8) for t in theta]
    w, s = [torch.empty_like(t) for t in theta], [torch.empty_like(t) for t in theta]
    keep = [torch.empty(t.shape, dtype=torch.bool, device=device) for t in theta]
    parts = dict(masked_copy=lambda: [torch.mul(t, ci, out=wi) for t, ci, wi in zip(theta, c, w)],
                 saliency=lambda: [torch.mul(gi, t, out=si).abs_() for gi, t, si in zip(g, theta, s)],
                 compare=lambda: [torch.ge(si, 1e-6, out=ki) for si, ki in zip(s, keep)])
    for f in parts.values(): f()   # warm-up
    times = {k: [] for k in parts}
    for _ in range(repeats):
        for k, f in parts.items(): times[k].append(_timed(f, device))
    r = {f'{k}_s': _median(v) for k, v in times.items()}
    r['per_step_s'] = 2 * r['masked_copy_s'] + r['saliency_s'] + r['compare_s']        # recompute (the default)
    r['per_step_keep_s'] = r['masked_copy_s'] + r['saliency_s'] + r['compare_s']       # `force_keep`
    r['prunable_weights'] = sum(t.numel() for t in theta)
    return r

def per_weight(row:dict, eager:dict) -> dict:
    "Nanoseconds per prunable weight and step: FORCE's overhead over the floor, what the 1.10 target allows, the eager minimum."
    m, T = row['prunable_weights'], row['steps']
    e = eager['per_step_keep_s' if row['method'] == 'force_keep' else 'per_step_s']
    return dict(method=row['method'], model=row['model'], prunable_weights=m, steps=T, ratio=row['ratio'],
                floor_per_step_s=row['floor_s'] / T, overhead_ns=(row['method_s'] - row['floor_s']) / T / m * 1e9,
                budget_ns=(TARGET - 1) * row['floor_s'] / T / m * 1e9, eager_min_ns=e / m * 1e9,
                eager_min_ratio=1 + e * T / row['floor_s'])

# ---------------------------------------------------------------------------------------------------------- memory
def _rss_kb():
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024

def _peak_kb():
    "Peak resident set size of this process in KB: `VmHWM` (what `clear_refs` resets), else `getrusage`."
    try:
        with open('/proc/self/status') as f: return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:'))
    except (OSError, StopIteration):   # `ru_maxrss` also counts the parent's RSS at fork, before exec: a fallback only
        import resource
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r // 1024 if sys.platform == 'darwin' else r

def _trim():
    "Hand the memory glibc keeps after `free` back to the OS, so that the next peak is counted from the real baseline."
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError): pass

def mem_child(spec:dict) -> dict:
    "Run in a fresh process: build the model and batches, then one dense forward+backward or one `prune_at_init`; peak growth in MB."
    torch.set_num_threads(spec['threads'])
    import force_edu.methods, force_edu.sensitivity  # imported before the baseline, as in the parent
    device = spec['device']
    model, batches, shape = build(spec['model'], spec['batch_size'], spec['n_batches'], device)
    if spec['what'] == 'dense': run = lambda: dense_passes(model, batches[:1], spec['bn_mode'])
    else: run = lambda: _prune(model, batches, spec['what'], spec['steps'], spec['bpe'], spec['sparsity'], spec['bn_mode'], shape)
    x, y = batches[0]
    dense_passes(model, [(x, y)], spec["bn_mode"])   # load the kernels once: not part of either peak
    gc.collect(); _trim()
    if device.startswith('cuda'):
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run(); torch.cuda.synchronize()
        return dict(peak_mb=(torch.cuda.max_memory_allocated() - base) / 2**20, how='torch.cuda.max_memory_allocated')
    base = _rss_kb()
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # reset the peak RSS to the current RSS
        how = 'peak RSS (VmHWM) after a clear_refs reset'
    except OSError: how = 'peak RSS, not reset'
    run()
    return dict(peak_mb=(_peak_kb() - base) / 1024, how=how)

_CHILD = ("import sys, json; sys.path.insert(0, {d!r}); import pruning_speed as b; "
          "print('@@' + json.dumps(b.mem_child(json.loads(sys.argv[1]))))")

def mem_in_subprocess(spec:dict, wait=True, live:bool=False):
    "Start `mem_child(spec)` in a fresh Python (`live`: with `LIVE_ENV`); the parsed result (or the `Popen` when `wait=False`)."
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', **(LIVE_ENV if live else {})}
    p = subprocess.Popen([sys.executable, '-c', _CHILD.format(d=str(HERE)), json.dumps(spec)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    return _mem_result(p) if wait else p

def _mem_result(p):
    out, err = p.communicate(timeout=1800)
    line = next((l for l in out.splitlines() if l.startswith('@@')), None)
    if p.returncode or line is None: raise RuntimeError(f"memory child failed ({p.returncode}):\n{err[-3000:]}")
    return json.loads(line[2:])

# ---------------------------------------------------------------------------------------------------------- training
TRAIN_MODELS = ('resnet18', 'small_vgg', 'tiny')

def measure_training(arch:str, size:int, bs:int, repeats:int, sparsity:float, steps:int, device:str, valid_pct:float=0.2,
                     n_train:int=2560) -> dict:
    """Seconds per epoch of a learner with `ForceCallback` against the same learner without it, alternately, in this process.
    `arch`: 'resnet18' (fastai's `vision_learner` ResNet-18 on the digits at `size` px), 'small_vgg'
    (`force_edu.sweep.small_vgg`, Kaiming-normal, on `n_train` Fashion-MNIST training images at 28 px, as the sweeps train it)
    or 'tiny' (smoke runs). Both learners are built alike from seed 0 and train with fastai's defaults (Adam, `fit(1, 1e-3)`
    per epoch); the pruned one zeroes the pruned gradients after each backward pass and the pruned weights after each step."""
    from fastai.callback.core import Callback
    from fastai.callback.progress import ProgressCallback  # noqa: F401 (patches `Learner.no_bar`)
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.vision.learner import vision_learner
    from torchvision.models import resnet18
    from force_edu.data import digits_dls
    from force_edu.callback import ForceCallback
    if arch not in TRAIN_MODELS: raise ValueError(f"unknown training model {arch!r}; known: {', '.join(TRAIN_MODELS)}")

    import force_edu.callback as fcb
    mask_s = [0.]   # seconds spent in the two zeroing calls of the callback (accumulated, read per epoch)
    def timed(f):
        def g(model):
            _sync(device); t = time.perf_counter(); r = f(model); _sync(device)
            mask_s[0] += time.perf_counter() - t
            return r
        return g
    orig = fcb.zero_pruned_grads, fcb.zero_pruned_weights
    fcb.zero_pruned_grads, fcb.zero_pruned_weights = timed(orig[0]), timed(orig[1])

    class EpochTimer(Callback):
        "Wall seconds, CPU seconds of this process (one thread: less sensitive to other jobs), and seconds in the zeroing calls, per epoch."
        order = 100
        def __init__(self): self.times, self.cpu, self.mask = [], [], []
        def before_epoch(self): _sync(device); self.t0, self.c0, self.m0 = time.perf_counter(), time.process_time(), mask_s[0]
        def after_epoch(self):
            _sync(device)
            self.times.append(time.perf_counter() - self.t0); self.cpu.append(time.process_time() - self.c0)
            self.mask.append(mask_s[0] - self.m0)

    def make(cbs):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            if arch == 'small_vgg':
                from force_edu.sweep import small_vgg, sweep_dls
                dls, _ = sweep_dls('fashion-mnist', bs=bs, n_train=n_train, n_valid=bs)
                dls.to(device)
                torch.manual_seed(0)
                return Learner(dls, small_vgg(), loss_func=CrossEntropyLossFlat(), cbs=cbs)
            dls = digits_dls(valid_pct=valid_pct, size=size, bs=bs, device=device)
            if arch == 'tiny': return Learner(dls, tiny_cnn(), loss_func=CrossEntropyLossFlat(), cbs=cbs)
            return vision_learner(dls, resnet18, pretrained=False, cbs=cbs)

    dense_t, masked_t = EpochTimer(), EpochTimer()
    dense = make([dense_t])
    cb = ForceCallback(sparsity, steps=steps, progress=False, verbose=False)
    masked = make([cb, masked_t])

    def epoch(learn):
        def f():
            with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
        return f
    try: side_by_side(epoch(masked), epoch(dense), repeats, device)
    finally: fcb.zero_pruned_grads, fcb.zero_pruned_weights = orig
    m, d = masked_t.times[1:], dense_t.times[1:]   # the first epoch of each is the warm-up (and the pruning's fit)
    mc, dc, mm = masked_t.cpu[1:], dense_t.cpu[1:], masked_t.mask[1:]
    from force_edu.masks import prunable_layers
    pruned = sum(int(l.weight[~cb.masks[n].to(l.weight.device)].count_nonzero()) for n, l in prunable_layers(masked.model).items())
    model = {'resnet18': f'resnet18_learner (digits {size}px)', 'small_vgg': 'small_vgg (fashion-mnist 28px)', 'tiny': 'tiny'}[arch]
    return dict(method='ForceCallback (training)', model=model, arch=arch, how=f'ForceCallback({sparsity}, steps={steps})',
                epochs=repeats, masked_epoch_s=m, dense_epoch_s=d, masked_s=_median(m), dense_s=_median(d),
                ratio=_median(m) / _median(d), masked_cpu_s=mc, dense_cpu_s=dc, ratio_cpu=_median(mc) / _median(dc),
                mask_epoch_s=mm, mask_s=_median(mm), mask_fraction=_median(mm) / _median(d),
                batches_per_epoch=len(dense.dls.train), batch_size=bs,
                prunable_weights=cb.masks.total, kept=cb.masks.kept, pruned_nonzero_after=pruned)

# ---------------------------------------------------------------------------------------------------------- scaling
def measure_scaling(model_name, steps_list, batch_size, bpe, sparsity, bn_mode, device) -> list[dict]:
    "FORCE's time at each T of `steps_list` (one timing each, alternating with the floor)."
    from force_edu.methods import prune_at_init
    model, batches, _ = build(model_name, batch_size, max(steps_list) * bpe, device)
    prune_at_init(model, batches, sparsity, 'force', steps=min(steps_list), batches_per_step=bpe, bn_mode=bn_mode)  # warm-up
    dense_passes(model, batches[:min(steps_list) * bpe], bn_mode)
    rows = []
    for i, T in enumerate(steps_list):
        f = lambda: prune_at_init(model, batches, sparsity, 'force', steps=T, batches_per_step=bpe, bn_mode=bn_mode)
        d = lambda: dense_passes(model, batches[:T * bpe], bn_mode)
        if i % 2 == 0: tf = _timed(f, device); td = _timed(d, device)
        else: td = _timed(d, device); tf = _timed(f, device)
        rows.append(dict(model=model_name, steps=T, batches_per_step=bpe, force_s=tf, floor_s=td, ratio=tf / td,
                         force_per_step_s=tf / T, floor_per_pass_s=td / (T * bpe)))
    return rows

# ---------------------------------------------------------------------------------------------------------- main
def machine_info(device) -> dict:
    cpu = platform.processor()
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    info = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__, cpu=cpu,
                cpu_count=os.cpu_count(), threads=torch.get_num_threads(), device=str(device))
    try: info['loadavg_start'] = os.getloadavg()
    except OSError: pass
    if str(device).startswith('cuda'): info['gpu'] = torch.cuda.get_device_name(device)
    return info

def _fmt(v, width:int, spec:str='') -> str:
    "`v` formatted with `spec`, right-aligned in `width` columns; '-' for `None`."
    return f"{'-' if v is None else format(v, spec):>{width}}"

def format_table(rows:list[dict]) -> str:
    "The one printed table: method, model, device, ratio, memory ratio (and the medians behind them)."
    head = (f"{'method':<26} {'model':<28} {'device':<6} {'T':>3} {'B':>2} {'floor s':>8} {'method s':>9} {'ratio':>6} {'mem ratio':>9} "
            f"{'live mem':>8}")
    lines = [head, '-' * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<26} {r['model']:<28} {r.get('device', ''):<6} {_fmt(r.get('steps'), 3)} "
                     f"{_fmt(r.get('batches_per_step'), 2)} {_fmt(r.get('floor_s'), 8, '.3f')} {_fmt(r.get('method_s'), 9, '.3f')} "
                     f"{_fmt(r.get('ratio'), 6, '.2f')} {_fmt(r.get('mem_ratio'), 9, '.2f')} {_fmt(r.get('mem_ratio_live'), 8, '.2f')}")
    return '\n'.join(lines)

def _split(s): return [x.strip() for x in str(s).split(',') if x.strip()]

@call_parse
def main(models:str='vgg19,resnet50,resnet18_learner', # comma-separated models (vgg19, resnet50, resnet18, resnet18_learner, tiny)
         methods:str='force,iter_snip,grasp_it,synflow,snip,grasp,force_keep', # comma-separated methods (`force_keep`: FORCE keeping theta*c for backward)
         other_models:str=None, # models on which the methods other than force run (default: all of --models)
         steps:int=20, # pruning steps T of the iterative methods
         batches_per_step:int=1, # B: batches averaged at each step
         batch_size:int=64, # batch size
         sparsity:float=0.99, # fraction of prunable weights removed
         repeats:int=3, # timed repeats of each side (after one warm-up); medians are reported
         device:str='cpu', # 'cpu' or 'cuda'
         threads:int=0, # torch CPU threads (0: leave torch's default)
         bn_mode:str='eval', # BatchNorm mode of the saliencies, and of the floor
         mem_steps:int=3, # pruning steps of the memory measurement (the peak does not grow with T)
         mem_repeats:int=3, # fresh processes per memory measurement; the median peak is reported
         train_epochs:int=5, # timed epochs of each learner in the training measurement (after one warm-up epoch each)
         train_models:str='resnet18,small_vgg', # learners of the training measurement: resnet18 (digits 64 px), small_vgg (Fashion-MNIST), tiny
         only_training:bool=False, # run the training-overhead measurement alone (no pruning timings, memory or scaling)
         scale_model:str='resnet18', # model of the T-scaling table
         scale_steps:str='5,10,20,40,80', # the T of the scaling table
         no_memory:bool=False, # skip the memory measurements
         no_training:bool=False, # skip the training-overhead measurement
         no_scaling:bool=False, # skip the scaling table
         out:str='benchmarks/results/cpu.json', # where the JSON goes
         quick:bool=False, # a smoke run of a few seconds on a tiny model
        ):
    "Time pruning at initialization against the dense passes it needs; print one table and write it as JSON."
    if quick:
        models, other_models, steps, batch_size, repeats, mem_steps, mem_repeats = 'tiny', None, 3, 16, 1, 2, 1
        threads = threads or 1
        scale_model, scale_steps = 'tiny', '2,4'
    if threads: torch.set_num_threads(threads)
    if only_training: models, other_models, no_memory, no_scaling = '', None, True, True
    train_models = ['tiny'] if quick else _split(train_models)
    for m in train_models:
        if m not in TRAIN_MODELS: raise SystemExit(f"unknown training model {m!r}; known: {', '.join(TRAIN_MODELS)}")
    models, methods = _split(models), _split(methods)
    others = _split(other_models) if other_models else models
    for m in models + others + ([] if no_scaling else [scale_model]):
        if m not in MODEL_NAMES: raise SystemExit(f"unknown model {m!r}; known: {', '.join(MODEL_NAMES)}")
    from force_edu.methods import get_method
    for m in methods:
        if m not in METHOD_NAMES: raise SystemExit(f"unknown method {m!r}; known: {', '.join(METHOD_NAMES)}")
        get_method(_base(m))
    t_start = time.perf_counter()
    info = machine_info(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {device}, {info['cpu']} "
          f"({info['cpu_count']} cores), load {info.get('loadavg_start')}", flush=True)
    rows, plans, phases, eager = [], {}, {}, {}
    tick = time.perf_counter()
    def phase(name):
        nonlocal tick
        now = time.perf_counter(); phases[name] = round(now - tick, 1); tick = now
    for name in dict.fromkeys(models + others):
        meths = [m for m in methods if (_base(m) == 'force' and name in models) or (_base(m) != 'force' and name in others)]
        if not meths: continue
        model, batches, shape = build(name, batch_size, steps * batches_per_step, device)
        P = n_params(model)
        plans[name] = (meths, shape)
        for meth in meths:
            info_m = get_method(_base(meth))
            T = steps if info_m.iterative else 1
            if meth == 'synflow':
                import copy
                m64 = copy.deepcopy(model).double()
                floor = lambda: synflow_floor(m64, shape, T, device)
                floor_desc = f'{T} fwd+bwd of one float64 all-ones input'
            else:
                fb = floor_batches(meth, batches, steps, batches_per_step)
                floor = lambda fb=fb: dense_passes(model, fb, bn_mode)
                floor_desc = f'{len(fb)} dense fwd+bwd passes'
            prune = lambda meth=meth: _prune(model, batches, meth, steps, batches_per_step, sparsity, bn_mode, shape)
            tp, tf = side_by_side(prune, floor, repeats, device)
            row = dict(method=meth, model=name, device=device, threads=torch.get_num_threads(), steps=T,
                       batches_per_step=batches_per_step if info_m.uses_data else None, batch_size=batch_size,
                       prunable_weights=P, sparsity=sparsity, floor=floor_desc, floor_runs=tf, method_runs=tp,
                       floor_s=_median(tf), method_s=_median(tp), ratio=_median(tp) / _median(tf),
                       per_step_overhead_s=(_median(tp) - _median(tf)) / T, mem_ratio=None)
            rows.append(row)
            print(f"  {meth:<10} {name:<18} method {row['method_s']:.3f} s  floor {row['floor_s']:.3f} s  "
                  f"ratio {row['ratio']:.2f}", flush=True)
            if meth == 'synflow': del m64
        if any(_base(m) == 'force' for m in meths):
            eager[name] = eager_minimum(model, device)
            e = eager[name]
            print(f"  eager minimum {name:<18} {e['per_step_s']:.3f} s/step ({e['per_step_s'] / e['prunable_weights'] * 1e9:.1f} ns "
                  f"a weight): theta*c {e['masked_copy_s']:.3f} s (x2), saliency {e['saliency_s']:.3f} s, "
                  f"comparison {e['compare_s']:.3f} s", flush=True)
        del model, batches; gc.collect()
    phase('timing')

    if not no_memory:
        specs = []
        for name, (meths, shape) in plans.items():
            base = dict(model=name, device=device, threads=torch.get_num_threads(), batch_size=batch_size, bn_mode=bn_mode,
                        bpe=batches_per_step, sparsity=sparsity, steps=mem_steps, n_batches=mem_steps * batches_per_step)
            specs += [dict(base, what=w) for w in ['dense'] + (meths[:1] if quick else meths)]  # --quick: the first method only
        runs = [(s, live) for s in specs for live in (False, True) for _ in range(mem_repeats)]
        if quick: res = [_mem_result(p) for p in [mem_in_subprocess(s, wait=False, live=l) for s, l in runs]]  # no timing here
        else: res = [mem_in_subprocess(s, live=l) for s, l in runs]
        peak = {}   # (model, what, live) -> the peaks of the repeats
        for (s, live), r in zip(runs, res): peak.setdefault((s['model'], s['what'], live), []).append(r['peak_mb'])
        how = res[0]['how']
        for s in specs:
            if s['what'] == 'dense': continue
            row = next(x for x in rows if x['model'] == s['model'] and x['method'] == s['what'])
            m, d = (_median(peak[s['model'], s['what'], False]), _median(peak[s['model'], 'dense', False]))
            ml, dl = (_median(peak[s['model'], s['what'], True]), _median(peak[s['model'], 'dense', True]))
            row.update(mem_method_mb=m, mem_dense_mb=d, mem_ratio=m / d, mem_method_live_mb=ml, mem_dense_live_mb=dl,
                       mem_ratio_live=ml / dl, mem_runs=dict(method=peak[s['model'], s['what'], False],
                       dense=peak[s['model'], 'dense', False], method_live=peak[s['model'], s['what'], True],
                       dense_live=peak[s['model'], 'dense', True]), mem_how=how, mem_steps=mem_steps)
            print(f"  memory {s['what']:<10} {s['model']:<18} {m:.0f} MB over dense {d:.0f} MB ({m / d:.2f}); "
                  f"live {ml:.0f} over {dl:.0f} MB ({ml / dl:.2f})", flush=True)
        phase('memory')

    training, trainings = None, []
    if not no_training:
        for arch in train_models:
            bs = 128 if arch == 'small_vgg' else 64
            t = measure_training(arch, 8 if quick else 64, bs, 1 if quick else train_epochs, sparsity, 2 if quick else 5, device,
                                 valid_pct=0.9 if quick else 0.2)
            trainings.append(t)
            print(f"  training {t['model']}: {t['masked_s']:.2f} s/epoch pruned, {t['dense_s']:.2f} s dense: ratio {t['ratio']:.3f}; "
                  f"CPU time ratio {t['ratio_cpu']:.3f}; zeroing {t['mask_s']:.3f} s/epoch = {t['mask_fraction']:.2%} of a dense "
                  f"epoch (pruned weights not 0 at the end: {t['pruned_nonzero_after']})", flush=True)
            rows.append(dict(method=t['method'], model=t['model'], device=device, threads=torch.get_num_threads(),
                             steps=None, batches_per_step=None, floor='the same learner without the callback, s/epoch',
                             floor_s=t['dense_s'], method_s=t['masked_s'], ratio=t['ratio'], mem_ratio=None))
        training = trainings[0]
        phase('training')

    scaling = None
    if not no_scaling:
        scaling = measure_scaling(scale_model, [int(s) for s in _split(scale_steps)], batch_size, batches_per_step,
                                  sparsity, bn_mode, device)
        phase('scaling')
    by_model = [dict(model=r['model'], prunable_weights=r['prunable_weights'], floor_per_pass_s=r['floor_s'] / (r['steps'] * r['batches_per_step']),
                     force_per_step_s=r['method_s'] / r['steps'], ratio=r['ratio'])
                for r in rows if r['method'] == 'force']
    if scaling:
        s = next((r for r in scaling if r['steps'] == steps), None)
        if s and s['model'] not in [r['model'] for r in by_model]:
            by_model.insert(0, dict(model=s['model'], prunable_weights=None, floor_per_pass_s=s['floor_per_pass_s'],
                                    force_per_step_s=s['force_per_step_s'], ratio=s['ratio']))

    budget = [per_weight(r, eager[r['model']]) for r in rows if r['method'] in ('force', 'force_keep')]

    info['loadavg_end'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    info['seconds'] = time.perf_counter() - t_start
    info['phase_seconds'] = phases
    argv = [a for a in sys.argv[1:]]
    result = dict(machine=info, command='python benchmarks/pruning_speed.py ' + ' '.join(argv),
                  config=dict(models=models, methods=methods, other_models=others, steps=steps,
                              batches_per_step=batches_per_step, batch_size=batch_size, sparsity=sparsity, repeats=repeats,
                              bn_mode=bn_mode, mem_steps=mem_steps, mem_repeats=mem_repeats, mem_live_env=LIVE_ENV,
                              train_epochs=train_epochs, train_models=train_models, only_training=only_training, quick=quick),
                  rows=rows, training=training, trainings=trainings, scaling=dict(steps=scaling, models=by_model), eager_minimum=eager,
                  per_weight=budget)
    print()
    print(format_table(rows))
    if scaling:
        print(f"\nScaling with T ({scale_model}, B={batches_per_step}):")
        for r in scaling:
            print(f"  T={r['steps']:>3}  force {r['force_s']:8.2f} s ({r['force_per_step_s']:.3f} s/step)  "
                  f"floor {r['floor_s']:8.2f} s  ratio {r['ratio']:.2f}")
    if by_model:
        print("\nScaling with the model (FORCE):")
        for r in by_model:
            print(f"  {r['model']:<18} floor {r['floor_per_pass_s']:.3f} s/pass  force {r['force_per_step_s']:.3f} s/step  "
                  f"ratio {r['ratio']:.2f}")
    if budget:
        print(f"\nPer prunable weight and step (ns): FORCE's overhead over the floor, what ratio {TARGET} allows, and the "
              f"eager minimum (theta*c, twice unless kept; |theta*g|; one comparison into the mask):")
        for r in budget:
            print(f"  {r['method']:<10} {r['model']:<18} overhead {r['overhead_ns']:6.1f}  budget {r['budget_ns']:6.1f}  "
                  f"eager minimum {r['eager_min_ns']:6.1f} (ratio {r['eager_min_ratio']:.3f} with a free top-k)")
    if out:
        out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + '\n')
        print(f"\nwrote {out} ({info['seconds']:.0f} s)")
    return result
