"""The fast paths behind `prune_at_init` (`force_edu.speed`) give exactly what the plain definitions give.

- `speed.fast_topk_mask` over a list of per-layer scores, read piece by piece, with `allowed=` (eq. 7), `out=` and `scale=`
  (|scores * scale| computed in the same pass): the same mask as a stable sort of the concatenated, transformed scores.
- `_times_mask`: `t * c` for a boolean `c`, read as bytes piece by piece.
- `FastMaskedLoss.grads` at a mask recomputes the masked weights in the backward pass (`_MaskedWeights`) instead of keeping
  them: the same gradients as the definition, `sensitivity.MaskedLoss.grads` (and as `_RECOMPUTE = False`), for shared
  layers, unmasked layers, weights used through a view or a metadata read, and several batches.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from force_edu import masks as M
from force_edu import sensitivity as S
from force_edu import speed as FP
from force_edu.methods import prune_at_init, repeat_batches


def _reference(s, k):
    "The obviously correct top-k: a stable sort on (score descending, index ascending)."
    keep = torch.zeros(s.numel(), dtype=torch.bool)
    keep[torch.sort(s, descending=True, stable=True).indices[:k]] = True
    return keep


def _scores(kind, m, g, dtype=torch.float32):
    if kind == 'ties': return torch.randint(0, 4, (m,), generator=g).to(dtype)
    if kind == 'zeros': return torch.zeros(m, dtype=dtype)
    if kind == 'inf':
        s = torch.randint(0, 3, (m,), generator=g).to(dtype); s[torch.rand(m, generator=g) < 0.2] = math.inf; return s
    return (torch.randn(m, generator=g) * torch.randn(m, generator=g)).to(dtype)


def _split(s, g):
    "`s` cut into a random number of layers of random sizes, some of them empty."
    cuts = sorted(torch.randint(0, s.numel() + 1, (int(torch.randint(0, 6, (1,), generator=g)),), generator=g).tolist())
    return list(s.tensor_split(cuts))


@pytest.mark.parametrize('chunk', [1, 7, 64])
def test_topk_mask_lists_match_a_stable_sort(monkeypatch, chunk):
    "Forced through the bracketed, piece-by-piece path on small inputs (pieces of `chunk` scores): same masks."
    monkeypatch.setattr(FP, '_TOPK_MIN', 1)
    monkeypatch.setattr(FP, '_CHUNK', chunk)
    g = torch.Generator().manual_seed(chunk)
    for trial in range(400):
        kind = ['ties', 'zeros', 'inf', 'randn'][trial % 4]
        dtype = torch.float64 if trial % 5 == 0 else torch.float32
        m = int(torch.randint(1, 200, (1,), generator=g))
        s, k = _scores(kind, m, g, dtype), int(torch.randint(0, m + 1, (1,), generator=g))
        allowed = torch.rand(m, generator=g) < 0.6 if trial % 3 == 0 else None
        scale = torch.randn(m, generator=g, dtype=dtype) if trial % 2 == 0 else None
        ref_s = s if scale is None else (s * scale).abs()
        if allowed is not None: ref_s = ref_s.masked_fill(~allowed, -math.inf)
        ref = _reference(ref_s, k)
        parts = _split(s.clone(), g)
        out = torch.empty(m, dtype=torch.bool) if trial % 4 == 1 else None
        got = FP.fast_topk_mask(parts, k, allowed=None if allowed is None else _split(allowed, g), out=out,
                          scale=None if scale is None else _same_split(scale, parts))
        assert torch.equal(got, ref), (kind, dtype, m, k, trial)
        if out is not None: assert got.data_ptr() == out.data_ptr()
        if scale is not None and 0 < k < m:   # the scores were transformed in place
            assert torch.equal(torch.cat(parts), (s * scale).abs()), (kind, m, k)


def _same_split(t, parts):
    "`t` cut like `parts`."
    sizes = [p.numel() for p in parts]
    return list(t.split(sizes))


def test_topk_mask_large_list_with_allowed_and_scale():
    "Above 2**20 scores, over ResNet-like layer sizes: the same mask as the flat reference, and `out` is filled."
    g = torch.Generator().manual_seed(3)
    sizes = [1728, 36864, 2**19 + 5, 0, 147456, 2**19 + 11, 5120]
    m = sum(sizes)
    grads = torch.randn(m, generator=g)
    theta = torch.randn(m, generator=g)
    allowed = torch.rand(m, generator=g) < 0.3
    for k in (1, 1000, int(0.1 * m), int(0.25 * m)):
        ref = _reference((grads * theta).abs().masked_fill(~allowed, -math.inf), k)
        out = torch.empty(m, dtype=torch.bool)
        got = FP.fast_topk_mask(list(grads.clone().split(sizes)), k, allowed=list(allowed.split(sizes)), out=out,
                          scale=list(theta.split(sizes)))
        assert torch.equal(got, ref) and got.data_ptr() == out.data_ptr(), k
        assert torch.equal(FP.fast_topk_mask(list((grads * theta).abs().split(sizes)), k), _reference((grads * theta).abs(), k))


def test_topk_mask_bad_arguments():
    s = [torch.rand(3), torch.rand(4)]
    with pytest.raises(ValueError, match='allowed'): FP.fast_topk_mask(s, 2, allowed=[torch.ones(7)])
    with pytest.raises(ValueError, match='allowed'): FP.fast_topk_mask(s, 2, allowed=[torch.ones(6, dtype=torch.bool)])
    with pytest.raises(ValueError, match='out'): FP.fast_topk_mask(s, 2, out=torch.empty(6, dtype=torch.bool))
    with pytest.raises(ValueError, match='out'): FP.fast_topk_mask(s, 2, out=torch.empty(7))
    with pytest.raises(ValueError, match='scale'): FP.fast_topk_mask(s, 2, scale=[torch.ones(7)])
    with pytest.raises(ValueError, match='no scores'): FP.fast_topk_mask([], 0)
    nan = [torch.rand(2**20), torch.tensor([math.nan, 1.])]
    with pytest.raises(ValueError, match='NaN'): FP.fast_topk_mask(nan, 10)


def test_topk_mask_allowed_split_differently():
    "A flat `allowed` with per-layer scores (and the reverse) is read as the concatenation."
    g = torch.Generator().manual_seed(4)
    s, a = torch.randn(50, generator=g), torch.rand(50, generator=g) < 0.5
    ref = _reference(s.masked_fill(~a, -math.inf), 12)
    assert torch.equal(FP.fast_topk_mask(list(s.split([20, 30])), 12, allowed=a), ref)
    assert torch.equal(FP.fast_topk_mask(s, 12, allowed=list(a.split([10, 40]))), ref)



def test_topk_mask_former_name_warns():
    "`speed.topk_mask`, the former name of `fast_topk_mask`, still works for one release: it warns and gives the same mask."
    s = torch.rand(100, generator=torch.Generator().manual_seed(5))
    with pytest.warns(DeprecationWarning, match='fast_topk_mask'): got = FP.topk_mask(s, 10)
    assert torch.equal(got, FP.fast_topk_mask(s, 10)) and torch.equal(got, M.topk_mask(s, 10))
    assert 'topk_mask' not in FP.__all__   # `from force_edu.speed import *` does not shadow the definition

@pytest.mark.parametrize('shape', [(3,), (5, 7), (64, 32, 3, 3), (2**16 + 3,)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_times_mask(shape, dtype):
    g = torch.Generator().manual_seed(5)
    t = torch.randn(shape, generator=g, dtype=dtype)
    c = torch.rand(shape, generator=g) < 0.4
    got = FP._times_mask(t, c)
    assert got.dtype == dtype and got.shape == t.shape and torch.equal(got, t * c)
    assert torch.equal(FP._times_mask(t.requires_grad_(), c), (t * c).detach())   # never part of a graph on the CPU
    if t.dim() == 2:
        tt = t.detach().t()   # not contiguous
        assert torch.equal(FP._times_mask(tt, c.t()), tt * c.t())


class _Shared(nn.Module):
    "A conv, a BatchNorm, a linear layer used twice, a layer read through a view and a metadata read, and one left out."
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 6)
        self.viewed = nn.Linear(6, 6)
        self.head = nn.Linear(6, 4)
    def forward(self, x):
        x = F.relu(self.bn(self.conv(x))).mean((2, 3))
        x = F.relu(self.fc(F.relu(self.fc(x))))   # the same weight twice
        w = self.viewed.weight.view(self.viewed.weight.shape[0], -1)   # a view, and a shape read
        x = F.relu(x @ w.t() + self.viewed.bias)
        return self.head(x)


def _batches(n, g):
    return [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize('bn_mode', ['train', 'eval'])
@pytest.mark.parametrize('n_batches', [1, 3])
def test_recomputed_masked_weights_give_the_same_gradients(monkeypatch, bn_mode, n_batches):
    torch.manual_seed(0)
    model, g = _Shared(), torch.Generator().manual_seed(6)
    bs = _batches(n_batches, g)
    ml = FP.FastMaskedLoss(model, bn_mode=bn_mode)
    c = ml.mask_list(torch.rand(ml.m, generator=g) < 0.5)
    c[-1] = None   # one layer without a mask
    unpacked = []
    unpack = FP._MaskedWeights.unpack
    monkeypatch.setattr(FP._MaskedWeights, 'unpack', lambda self, p: unpacked.append(isinstance(p, tuple)) or unpack(self, p))
    monkeypatch.setattr(FP, '_RECOMPUTE', True)
    got = ml.grads(bs, c)
    assert sum(unpacked) == 3 * n_batches, "masked weights were saved instead of recomputed"   # conv, fc twice (head: no mask; viewed: through a view)
    monkeypatch.setattr(FP, '_RECOMPUTE', False)
    ref = ml.grads(bs, c)
    for a, b in zip(got, ref): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(got, S.MaskedLoss(model, bn_mode=bn_mode).grads(bs, c)): assert torch.equal(a, b)   # the definition, bit for bit


def test_recompute_prunes_the_same_and_leaves_the_model_alone(monkeypatch):
    "Every progressive method gives the same mask either way; the model's parameters, buffers and hooks are untouched."
    from force_edu.methods import model_fingerprint, same_fingerprint
    g = torch.Generator().manual_seed(7)
    bs = _batches(4, g)
    for method in ('force', 'iter_snip', 'grasp_it'):
        torch.manual_seed(1)
        model = _Shared()
        before = model_fingerprint(model)
        res = {}
        for rc in (True, False):
            monkeypatch.setattr(FP, '_RECOMPUTE', rc)
            res[rc] = prune_at_init(model, repeat_batches(bs), 0.7, method, steps=4, bn_mode='train')
            assert same_fingerprint(before, model_fingerprint(model)), method
        assert res[True] == res[False], method


def test_a_masked_layer_the_forward_never_uses_is_a_clear_error(monkeypatch):
    "With a mask, a prunable weight the forward pass never touches is named in a `ValueError` (not a bare autograd error)."
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 3), nn.Linear(4, 3)
        def forward(self, x): return self.used(x)
    monkeypatch.setattr(FP, '_RECOMPUTE', True)
    ml = FP.FastMaskedLoss(Unused())
    c = ml.mask_list(torch.ones(ml.m, dtype=torch.bool))
    with pytest.raises(ValueError, match='spare'): ml.grads([(torch.randn(5, 4), torch.randint(0, 3, (5,)))], c)


# ---- zeroing the pruned entries (`Masks.apply`, `zero_pruned_grads`, `zero_pruned_weights`) -------------------------

@pytest.mark.parametrize('density', [0., 0.01, 0.5, 1.])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.bfloat16])
def test_zero_pruned_matches_masked_fill(density, dtype):
    "The kept-index path (gather the kept, memset, scatter back) gives what `masked_fill_(~c, 0)` gives, NaN and inf included."
    g = torch.Generator().manual_seed(0)
    for shape in [(7,), (16, 3, 3, 3), (70_000,)]:
        c = torch.rand(shape, generator=g) < density
        t = torch.randn(shape, generator=g).to(dtype)
        t.view(-1)[::5] = float('nan'); t.view(-1)[1::7] = float('inf')
        mod = nn.Linear(1, 1)
        mod.register_buffer(M._KEEP, c, persistent=False)
        got = t.clone()
        M._zero_pruned_(got, mod)
        want = t.masked_fill(~c, 0)
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
        assert not torch.signbit(got[~c]).any()   # +0, never -0
        tt = t.clone().t() if t.dim() == 2 else t.clone().permute(*reversed(range(t.dim())))   # not contiguous (when 2-D+)
        mod._buffers[M._KEEP] = c.permute(*reversed(range(c.dim())))
        M._zero_pruned_(tt, mod)
        assert torch.equal(tt.nan_to_num(), t.permute(*reversed(range(t.dim()))).masked_fill(~mod._buffers[M._KEEP], 0).nan_to_num())
