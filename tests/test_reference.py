"""`prune_at_init` against a slow, obviously-correct re-implementation of Algorithm 1 written here.

The reference is deliberately independent of the library: it copies the model, multiplies explicit float
mask tensors `c` into the prunable weights with `torch.func.functional_call`, takes the gradient with
respect to the mask variable itself (dL(theta*c)/dc at c = c_t, eq. 5), and selects the top-k with a
Python stable sort on (-score, index). It re-derives the schedule (eq. 8/9 with rounding) and only checks
it against `sparsity_schedule`. Masks are compared exactly.
"""
import copy, functools, math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from sklearn.datasets import load_digits

from force_edu.masks import Masks
from force_edu.methods import prune_at_init, sparsity_schedule
from force_edu.sensitivity import raw_logit_nll

@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Tiny models: one intra-op thread is much faster than two on a shared machine (OpenMP spin-waits)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- data and models

@functools.lru_cache(maxsize=None)
def _digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float64).view(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm], y[perm]

def digit_batches(n, bs=32, dtype=torch.float64, device='cpu'):
    "`n` consecutive (x, y) batches of the shuffled scikit-learn digits, images 1x8x8."
    X, y = _digits()
    out = []
    for i in range(n):
        idx = torch.arange(i * bs, (i + 1) * bs) % len(X)
        out.append((X[idx].to(device, dtype), y[idx].to(device)))
    return out

def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

def cnn(bn=True, seed=0):
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), norm(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3), norm(8), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 10))

MODELS = {'mlp': lambda: mlp(), 'cnn': lambda: cnn(bn=False), 'cnn_bn': lambda: cnn(bn=True)}

# ---------------------------------------------------------------- the reference

PRUNABLE = (nn.Conv2d, nn.Linear)

def ref_schedule(m, k, T, mode='exp'):
    "Eq. 9 (exp) or eq. 8 (linear), rounded to integers; k_T = k."
    ks = []
    for t in range(1, T + 1):
        a = t / T
        kt = a * k + (1 - a) * m if mode == 'linear' else math.exp(a * math.log(k) + (1 - a) * math.log(m))
        ks.append(int(round(kt)))
    ks[-1] = k
    return ks

def ref_topk(scores, k, alive=None):
    "Keep the k best of `scores` (a flat tensor) by a stable sort on (-score, index), among `alive` if given."
    s = scores.tolist()
    cand = range(len(s)) if alive is None else [i for i, a in enumerate(alive.tolist()) if a]
    order = sorted(cand, key=lambda i: (-s[i], i))
    keep = torch.zeros(len(s), dtype=torch.bool)
    keep[list(order[:k])] = True
    return keep

# the saliency losses, written here: the official code's NLL of raw logits, -mean z_y, is the default of FORCE and
# Iterative SNIP; cross-entropy (the paper's L) that of the other methods
LOSSES = {'raw_nll': lambda z, y: -z.gather(1, y[:, None]).mean(), 'cross_entropy': F.cross_entropy}
DEFAULT_LOSS = {'force': 'raw_nll', 'iter_snip': 'raw_nll'}   # every other method: 'cross_entropy'

class Reference:
    "The loss of a private copy of `model` as a function of explicit float masks `c` on its prunable weights."
    def __init__(self, model, bn_mode, loss='raw_nll'):
        self.loss_fn = LOSSES[loss]
        self.net = copy.deepcopy(model)
        self.net.eval()
        if bn_mode == 'train':
            for mod in self.net.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm): mod.train()
        layers = [(n, mod) for n, mod in self.net.named_modules() if isinstance(mod, PRUNABLE)]
        self.names = [n for n, _ in layers]
        self.theta = [mod.weight.detach().clone() for _, mod in layers]
        self.m = sum(t.numel() for t in self.theta)

    def _loss(self, weights, batches):
        "The mean over `batches` of the saliency loss of the copy with its prunable weights replaced."
        params = {n: p.detach() for n, p in self.net.named_parameters()}
        params.update({f'{n}.weight': w for n, w in zip(self.names, weights)})
        return sum(self.loss_fn(functional_call(self.net, params, (x,)), y) for x, y in batches) / len(batches)

    def grad_wrt_mask(self, c, batches):
        "dL(theta*c)/dc at c (eq. 5), flat."
        cv = [ci.clone().requires_grad_() for ci in c]
        loss = self._loss([t * ci for t, ci in zip(self.theta, cv)], batches)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, cv)])

    def grad_wrt_weights(self, c, batches):
        "grad L at theta*c, flat."
        w = [(t * ci).detach().requires_grad_() for t, ci in zip(self.theta, c)]
        loss = self._loss(w, batches)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, w)])

    def split(self, flat):
        return [p.view_as(t).to(t.dtype) for p, t in zip(flat.split([t.numel() for t in self.theta]), self.theta)]

    def masks(self, flat):
        return Masks({n: p.bool() for n, p in zip(self.names, self.split(flat))})

def reference_prune(model, batches, sparsity, method, steps, bn_mode='eval', mode='exp', bps=1, loss=None):
    """Algorithm 1 (force), eq. 7 (iter_snip), eq. 17 (grasp_it), eq. 3 (snip); step t uses batches[t*bps:(t+1)*bps].
    'snip_mb' is SNIP on the mean loss of `steps` x `bps` batches."""
    ref = Reference(model, bn_mode, loss or DEFAULT_LOSS.get(method, 'cross_entropy'))
    m = ref.m
    k = int(round((1 - sparsity) * m))
    if method == 'snip_mb':
        score = ref.grad_wrt_mask(ref.split(torch.ones(m, dtype=torch.float64)), batches[:steps * bps]).abs()
        return ref.masks(ref_topk(score, k))
    ks = ref_schedule(m, k, steps, mode)
    assert ks == sparsity_schedule(m, k, steps, mode), "the re-derived schedule differs from the library's"
    c = torch.ones(m, dtype=torch.float64)            # c_0 = 1
    for t in range(steps):
        cl, bs = ref.split(c), batches[t * bps:(t + 1) * bps]
        if method in ('force', 'iter_snip', 'snip'):
            score = ref.grad_wrt_mask(cl, bs).abs()
        elif method == 'grasp_it':
            score = ref.grad_wrt_weights(cl, bs).pow(2)
        else: raise AssertionError(method)
        alive = None if method in ('force', 'snip') else c.bool()
        c = ref_topk(score, ks[t], alive).to(torch.float64)   # c_{t+1}
    return ref.masks(c)

# ---------------------------------------------------------------- the checks

def _prep(name, dtype): return MODELS[name]().to(dtype)

CASES = [('mlp', 'eval'), ('cnn', 'eval'), ('cnn_bn', 'eval'), ('cnn_bn', 'train')]

@pytest.mark.parametrize('method', ['force', 'iter_snip', 'grasp_it'])
@pytest.mark.parametrize('name,bn_mode', CASES)
@pytest.mark.parametrize('sparsity,steps', [(0.9, 6), (0.99, 10)])
def test_progressive_matches_reference(method, name, bn_mode, sparsity, steps):
    model = _prep(name, torch.float64)
    bs = digit_batches(steps)
    got = prune_at_init(model, bs, sparsity, method, steps=steps, bn_mode=bn_mode)
    want = reference_prune(model, bs, sparsity, method, steps, bn_mode)
    assert got.kept == want.kept
    assert got == want

@pytest.mark.parametrize('method', ['force', 'iter_snip', 'grasp_it', 'snip'])
@pytest.mark.parametrize('name,bn_mode', [('mlp', 'eval'), ('cnn_bn', 'train')])
def test_both_losses_match_reference(method, name, bn_mode):
    "With either saliency loss passed explicitly, the masks are those of the reference scoring with that loss."
    model = _prep(name, torch.float64)
    steps = 1 if method == 'snip' else 6
    bs = digit_batches(steps)
    for loss, loss_func in (('cross_entropy', F.cross_entropy), ('raw_nll', raw_logit_nll)):
        got = prune_at_init(model, bs, 0.95, method, steps=steps, bn_mode=bn_mode, loss_func=loss_func)
        assert got == reference_prune(model, bs, 0.95, method, steps, bn_mode, loss=loss), loss
    assert got != reference_prune(model, bs, 0.95, method, steps, bn_mode, loss='cross_entropy')   # the loss matters

@pytest.mark.parametrize('name,bn_mode', CASES)
def test_linear_schedule_matches_reference(name, bn_mode):
    model = _prep(name, torch.float64)
    bs = digit_batches(5)
    for method in ('force', 'iter_snip'):
        got = prune_at_init(model, bs, 0.95, method, steps=5, mode='linear', bn_mode=bn_mode)
        assert got == reference_prune(model, bs, 0.95, method, 5, bn_mode, mode='linear')

@pytest.mark.parametrize('name,bn_mode', CASES)
@pytest.mark.parametrize('sparsity', [0.5, 0.9, 0.99])
def test_snip_matches_reference_and_force_T1(name, bn_mode, sparsity):
    model = _prep(name, torch.float64)
    bs = digit_batches(1)
    want = reference_prune(model, bs, sparsity, 'snip', 1, bn_mode)
    assert prune_at_init(model, bs, sparsity, 'snip', bn_mode=bn_mode) == want
    # T = 1 FORCE is SNIP, exactly (and so is T = 1 Iter-SNIP), scored with the same loss
    assert prune_at_init(model, bs, sparsity, 'force', steps=1, bn_mode=bn_mode, loss_func=F.cross_entropy) == want
    assert prune_at_init(model, bs, sparsity, 'iter_snip', steps=1, bn_mode=bn_mode, loss_func=F.cross_entropy) == want
    assert prune_at_init(model, bs, sparsity, 'force', steps=1, bn_mode=bn_mode) == prune_at_init(model, bs, sparsity, 'snip', bn_mode=bn_mode, loss_func=raw_logit_nll)

@pytest.mark.parametrize('name,bn_mode', CASES)
def test_several_batches_per_step_match_reference(name, bn_mode):
    "batches_per_step = 2: the saliency of the mean loss over the step's two batches; SNIP-MB over steps x bps batches."
    model = _prep(name, torch.float64)
    bs = digit_batches(8)
    for method in ('force', 'iter_snip', 'grasp_it'):
        got = prune_at_init(model, bs, 0.95, method, steps=4, batches_per_step=2, bn_mode=bn_mode)
        assert got == reference_prune(model, bs, 0.95, method, 4, bn_mode, bps=2), method
    got = prune_at_init(model, bs, 0.95, 'snip_mb', steps=4, batches_per_step=2, bn_mode=bn_mode)
    assert got == reference_prune(model, bs, 0.95, 'snip_mb', 4, bn_mode, bps=2)
    assert got != reference_prune(model, bs, 0.95, 'snip', 1, bn_mode)

@pytest.mark.parametrize('name,bn_mode', [('mlp', 'eval'), ('cnn_bn', 'train')])
def test_float32_matches_reference(name, bn_mode):
    "The same in float32: the library and the reference perform the same floating-point operations."
    model = _prep(name, torch.float32)
    bs = digit_batches(6, dtype=torch.float32)
    for method in ('force', 'iter_snip', 'grasp_it'):
        got = prune_at_init(model, bs, 0.95, method, steps=6, bn_mode=bn_mode)
        assert got == reference_prune(model, bs, 0.95, method, 6, bn_mode)

def test_reference_sanity():
    "The reference itself: the mask-gradient is theta * grad L(theta*c), and FORCE resurrects while Iter-SNIP cannot."
    model = mlp().double()
    ref = Reference(model, 'eval')
    b = digit_batches(1)
    c = ref.split((torch.rand(ref.m, generator=torch.Generator().manual_seed(1)) < 0.3).double())
    gc = ref.grad_wrt_mask(c, b)
    gw = ref.grad_wrt_weights(c, b)
    assert torch.allclose(gc, torch.cat([t.reshape(-1) for t in ref.theta]) * gw, rtol=1e-12, atol=1e-15)
    # iter_snip masks are nested; the FORCE run must differ from Iter-SNIP somewhere for the test to mean anything
    bs = digit_batches(10)
    f = reference_prune(model, bs, 0.99, 'force', 10)
    i = reference_prune(model, bs, 0.99, 'iter_snip', 10)
    assert f != i
    # and the BatchNorm mode matters on the BN network, so the two bn_mode cases test different things
    net, bs = cnn(bn=True).double(), digit_batches(6)
    assert reference_prune(net, bs, 0.99, 'force', 6, 'eval') != reference_prune(net, bs, 0.99, 'force', 6, 'train')

# ---------------------------------------------------------------- GRASP-MB against an explicit Hessian

def tiny_mlp(seed=0):
    "656 prunable weights (tanh: a Hessian that is not piecewise constant), small enough for the full Hessian."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 10)).double()

def ref_grasp_scores(model, batches, loss='cross_entropy'):
    """GRASP's signed score theta * (H g) (eq. 4; keep the top k), with g and H the gradient and the explicit Hessian
    (`torch.autograd.functional.hessian`, no Hessian-vector product) of the mean loss over all of `batches`."""
    ref = Reference(model, 'eval', loss)
    theta = torch.cat([t.reshape(-1) for t in ref.theta])
    loss = lambda v: ref._loss(ref.split(v), batches)
    H = torch.autograd.functional.hessian(loss, theta)
    g = torch.autograd.functional.jacobian(loss, theta)
    assert H.shape == (ref.m, ref.m) and torch.allclose(H, H.T, rtol=0, atol=1e-12)
    return ref, theta * (H @ g)

@pytest.mark.parametrize('sparsity', [0.5, 0.9, 0.98])
def test_grasp_mb_matches_explicit_hessian(sparsity):
    """GRASP-MB with steps=3, batches_per_step=2 is GRASP on the mean loss of those 6 batches: the top-k of
    theta * (H g), H and g of the mean loss. The network has no BatchNorm, so `bn_mode` changes nothing. Scored with
    cross-entropy, where the last check tells the two averages apart (the raw-logit NLL is checked in `test_grasp_raw_nll`)."""
    model, bs = tiny_mlp(), digit_batches(6)
    ref, score = ref_grasp_scores(model, bs)
    k = int(round((1 - sparsity) * ref.m))
    want = ref.masks(ref_topk(score, k))
    for bn_mode in ('train', 'eval'):
        got = prune_at_init(model, bs, sparsity, 'grasp_mb', steps=3, batches_per_step=2, bn_mode=bn_mode, loss_func=F.cross_entropy, temperature=1)
        assert got.kept == k and got == want, bn_mode
    # extra batches are not used, and the average is over all six: GRASP on the first batch alone is another mask
    assert prune_at_init(model, bs + digit_batches(8)[6:], sparsity, 'grasp_mb', steps=3, batches_per_step=2, loss_func=F.cross_entropy, temperature=1) == want
    one = prune_at_init(model, bs, sparsity, 'grasp', loss_func=F.cross_entropy, temperature=1)
    assert one == ref.masks(ref_topk(ref_grasp_scores(model, bs[:1])[1], k)) and one != want
    # the test tells GRASP of the mean loss from the mean of the six per-batch GRASP scores, theta * (H_b g_b)
    per_batch = sum(ref_grasp_scores(model, [b])[1] for b in bs) / len(bs)
    assert ref.masks(ref_topk(per_batch, k)) != want

@pytest.mark.parametrize('sparsity', [0.5, 0.9])
def test_grasp_raw_nll(sparsity):
    "Scored with the raw-logit NLL, GRASP and GRASP-MB are the top-k of theta * (H g) of that loss; a temperature changes nothing."
    model, bs = tiny_mlp(), digit_batches(6)
    ref, score = ref_grasp_scores(model, bs, 'raw_nll')
    k = int(round((1 - sparsity) * ref.m))
    assert prune_at_init(model, bs, sparsity, 'grasp_mb', steps=3, batches_per_step=2, loss_func=raw_logit_nll, temperature=1) == ref.masks(ref_topk(score, k))
    one = prune_at_init(model, bs, sparsity, 'grasp', loss_func=raw_logit_nll, temperature=1)
    assert one == ref.masks(ref_topk(ref_grasp_scores(model, bs[:1], 'raw_nll')[1], k))
    assert prune_at_init(model, bs, sparsity, 'grasp', loss_func=raw_logit_nll, temperature=200) == one

# ---------------------------------------------------------------- the same on a GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('method,steps', [('snip', 1), ('force', 5), ('iter_snip', 5)])
def test_gpu_masks_equal_cpu(method, steps):
    model = mlp().double()
    bs = digit_batches(steps)
    cpu = prune_at_init(model, bs, 0.9, method, steps=steps)
    gpu_model = copy.deepcopy(model).cuda()
    gpu = prune_at_init(gpu_model, digit_batches(steps, device='cuda'), 0.9, method, steps=steps)
    assert gpu == cpu
    # batches on the CPU are moved to the model's device
    assert prune_at_init(gpu_model, bs, 0.9, method, steps=steps) == cpu
    assert gpu == reference_prune(model, bs, 0.9, method, steps)

@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('method,steps', [('snip', 1), ('force', 3), ('iter_snip', 3)])
def test_gpu_float32_batchnorm_deterministic(method, steps):
    """float32 conv + BatchNorm (batch statistics) on CUDA. `prune_at_init` runs the saliencies with cuDNN deterministic
    and without autotuning, so two runs give the identical mask even when the session asked for `benchmark=True`,
    and it restores the session's flags. Against the CPU, float32 sums in another order: the masks agree up to ties
    and rounding (IoU > 0.99). That comparison turns TF32 off (cuDNN's default on Ampere and later rounds convolution
    inputs to 10-bit mantissas), and uses 3 steps at 90%: on this small network, FORCE and Iterative SNIP at 5-10 steps
    amplify a relative perturbation of 1e-4 of the inputs into masks that share a third of their weights (measured on
    the CPU), while at 3 steps masks stay identical under 1e-5 (10 noise seeds)."""
    from force_edu.methods import model_fingerprint, same_fingerprint
    cudnn = torch.backends.cudnn
    prev = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32
    model = cnn(bn=True)                                   # float32
    bs = digit_batches(steps, dtype=torch.float32)
    try:
        cudnn.deterministic, cudnn.benchmark = False, True     # what prune_at_init must override, then restore
        gpu_model = copy.deepcopy(model).cuda()
        gbs = digit_batches(steps, dtype=torch.float32, device='cuda')
        before = model_fingerprint(gpu_model)
        seen = []
        on_step = lambda t, k, c: seen.append((cudnn.deterministic, cudnn.benchmark))
        a = prune_at_init(gpu_model, gbs, 0.9, method, steps=steps, on_step=on_step)
        b = prune_at_init(gpu_model, gbs, 0.9, method, steps=steps, on_step=on_step)
        assert a == b
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)                      # restored
        assert len(seen) == (2 * steps if method != 'snip' else 0) and all(f == (True, False) for f in seen)
        assert same_fingerprint(before, model_fingerprint(gpu_model))
        cudnn.allow_tf32 = False
        gpu = prune_at_init(gpu_model, gbs, 0.9, method, steps=steps)
        cpu = prune_at_init(model, bs, 0.9, method, steps=steps)
        assert gpu.kept == cpu.kept and gpu.overlap(cpu) > 0.99, gpu.overlap(cpu)
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32 = prev
