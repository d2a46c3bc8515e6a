"Tests of `force_edu.theory`: swap gaps, CRS estimates and the bound of Theorem 1."
import math, warnings

import pytest
import torch
import torch.nn as nn

from force_edu.masks import Masks, topk_mask
from force_edu.sensitivity import MaskedLoss, connection_sensitivity, force_objective
from force_edu.theory import swap_gaps, estimate_crs, local_optimality_bound, SwapGaps, CRSEstimate

torch.set_num_threads(1)


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))   # 32 prunable weights


@pytest.fixture(scope='module')
def setup():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)) for _ in range(2)]
    net = tiny()
    ml = MaskedLoss(net)
    shapes = ml.shapes
    # a top-k step from a random c_t (20 weights) to c_next (14 weights), as Iterative SNIP would take it
    c_t = Masks.from_flat(topk_mask(torch.rand(ml.m, generator=g), 20), shapes)
    s = torch.cat([v.reshape(-1) for v in connection_sensitivity(net, batches, c_t).values()]).abs()
    c_next = Masks.from_flat(topk_mask(s.masked_fill(~c_t.flat(), -1.), 14), shapes)
    return net, batches, c_t, c_next


def test_bad_input(setup):
    net, batches, c_t, c_next = setup
    with pytest.raises(ValueError, match='larger than'):           # |c_t \ c_next| = 6
        swap_gaps(net, batches, c_t, c_next, p=7)
    small = Masks.from_flat(c_next.flat() & (c_next.flat().cumsum(0) <= 2), c_next.shapes)   # keeps 2 of c_t's 20
    with pytest.raises(ValueError, match=r'larger than \|c_next\| = 2'):
        swap_gaps(net, batches, c_t, small, p=3)
    with pytest.raises(ValueError, match='not a subset of c_t'):
        swap_gaps(net, batches, c_next, c_t, p=1)
    outside = c_next.flat().clone(); outside[(~c_t.flat()).nonzero()[0]] = True
    with pytest.raises(ValueError, match='not a subset'):
        swap_gaps(net, batches, c_t, Masks.from_flat(outside, c_t.shapes), p=1)
    with pytest.raises(ValueError, match='exhaustive'):
        swap_gaps(net, batches, c_t, c_next, p=2, exhaustive=True)
    with pytest.raises(ValueError, match='p must be'):
        swap_gaps(net, batches, c_t, c_next, p=-1)
    with pytest.raises(ValueError, match='n_samples must be'):
        swap_gaps(net, batches, c_t, c_next, p=1, n_samples=0)
    with pytest.raises(ValueError, match='no batches'):
        swap_gaps(net, [], c_t, c_next, p=1)
    with pytest.raises(ValueError, match='entries'):
        swap_gaps(net, batches, None, torch.ones(7, dtype=torch.bool), p=1)


def test_p_zero_gap_is_zero(setup):
    net, batches, c_t, c_next = setup
    for kw in (dict(exhaustive=True), dict(n_samples=5)):
        sg = swap_gaps(net, batches, c_t, c_next, p=0, **kw)
        assert torch.allclose(sg.gap, torch.zeros_like(sg.gap), atol=1e-6)
        assert sg.minus.shape[1] == 0 and sg.plus.shape[1] == 0
        assert abs(sg.eps) < 1e-6


def test_exhaustive_and_sampled_agree(setup):
    net, batches, c_t, c_next = setup
    ex = swap_gaps(net, batches, c_t, c_next, p=1, exhaustive=True)
    assert ex.exhaustive and ex.n == 14 * 6 and ex.step == 6
    pairs = {(int(a), int(b)) for a, b in zip(ex.minus[:, 0], ex.plus[:, 0])}
    assert len(pairs) == ex.n                                        # every swap exactly once
    assert all(c_next.flat()[a] and c_t.flat()[b] and not c_next.flat()[b] for a, b in pairs)
    lookup = {(int(a), int(b)): float(g) for a, b, g in zip(ex.minus[:, 0], ex.plus[:, 0], ex.gap)}
    sm = swap_gaps(net, batches, c_t, c_next, p=1, n_samples=600, seed=3)
    assert not sm.exhaustive
    for a, b, g in zip(sm.minus[:, 0], sm.plus[:, 0], sm.gap):
        assert abs(lookup[(int(a), int(b))] - float(g)) < 1e-5
    assert sm.eps <= ex.eps + 1e-6
    assert abs(sm.eps - ex.eps) < 1e-5                               # 600 draws of 84 swaps hit the worst one
    assert torch.allclose(ex.gap, ex.gamma1 + ex.gamma2 + ex.gamma3, atol=1e-5)


def test_gap_matches_force_objective(setup):
    net, batches, c_t, c_next = setup
    sg = swap_gaps(net, batches, c_t, c_next, p=2, n_samples=4, seed=1)
    S_next = force_objective(net, c_next, batches)
    assert abs(sg.S_next - S_next) < 1e-5
    assert abs(sg.S_t - force_objective(net, c_t, batches)) < 1e-5
    for i in range(sg.n):
        f = c_next.flat().clone(); f[sg.minus[i]] = False; f[sg.plus[i]] = True
        assert abs(force_objective(net, Masks.from_flat(f, c_next.shapes), batches) - S_next - float(sg.gap[i])) < 1e-5


def test_loop_equals_vmap_and_model_untouched(setup):
    net, batches, c_t, c_next = setup
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = swap_gaps(net, batches, c_t, c_next, p=1, exhaustive=True, chunk=7)
    b = swap_gaps(net, batches, c_t, c_next, p=1, exhaustive=True, vectorize=False)
    assert torch.allclose(a.gap, b.gap, atol=1e-5) and torch.allclose(a.d_t, b.d_t, atol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in net.parameters())


def test_top_k_step_margin_and_bound(setup):
    net, batches, c_t, c_next = setup
    sg = swap_gaps(net, batches, c_t, c_next, p=1, exhaustive=True)
    assert sg.margin >= 0                                            # the step is a top-k of the saliency at c_t
    assert (sg.sal_plus - sg.sal_minus <= -sg.margin + 1e-7).all()   # eq. 16, first part
    lam = max(estimate_crs(net, batches, c, 50, singles=True).lam for c in (c_t, c_next))
    assert sg.eps <= local_optimality_bound(MaskedLoss(net).theta, lam, 1, c_t)


def test_batchnorm_train_falls_back_to_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,)))]
    c_next = Masks.from_flat(torch.arange(32) % 3 == 0, MaskedLoss(net).shapes)
    ev = swap_gaps(net, batches, None, c_next, p=1, n_samples=4, bn_mode='eval')
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        tr = swap_gaps(net, batches, None, c_next, p=1, n_samples=4, bn_mode='train')
        tr_loop = swap_gaps(net, batches, None, c_next, p=1, n_samples=4, bn_mode='train', vectorize=False)
    assert torch.isfinite(ev.gap).all() and torch.allclose(tr.gap, tr_loop.gap, atol=1e-5)
    assert torch.equal(net[1].running_mean, torch.zeros(4))          # the model's statistics are untouched


def test_estimate_crs(setup):
    net, batches, c_t, _ = setup
    est = estimate_crs(net, batches, c_t, 30, seed=0)
    assert isinstance(est, CRSEstimate) and est.k == 20 and len(est.ratios) == 30
    assert est.lam == float(est.ratios.max()) == float(est)
    assert ((est.removed >= 1) & (est.removed <= 20)).all()
    more = estimate_crs(net, batches, c_t, 30, seed=0, singles=True)
    assert more.lam >= est.lam and len(more.ratios) == 50             # a superset of samples: a lower estimate can only rise
    # a single removal computed by hand
    ml = MaskedLoss(net)
    theta = torch.cat([t.reshape(-1) for t in ml.theta])
    cf = c_t.flat(); i = int(cf.nonzero()[0]); ch = cf.clone(); ch[i] = False
    g = lambda c: torch.cat([x.reshape(-1) for x in ml.grads(batches, Masks.from_flat(c, c_t.shapes))])
    by_hand = float(((g(cf) - g(ch)).abs() * cf).max() / theta[i].abs())
    assert any(abs(float(r) - by_hand) < 1e-4 * max(1, by_hand) for r in more.ratios[30:])
    one = estimate_crs(net, batches, c_t, 10, removed=3)
    assert (one.removed == 3).all()
    w = estimate_crs(net, batches, c_t, 10, n_w=2)
    assert len(w.ratios) == 30 and set(w.w_index.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match='empty'):
        estimate_crs(net, batches, Masks.from_flat(torch.zeros(32, dtype=torch.bool), c_t.shapes), 5)
    with pytest.raises(ValueError, match='removed sizes'):
        estimate_crs(net, batches, c_t, 5, removed=21)
    with pytest.raises(ValueError, match='n_samples'):
        estimate_crs(net, batches, c_t, 0)


def test_bound_arithmetic():
    th = torch.tensor([0.5, -2.0, 1.0])
    assert local_optimality_bound(th, 0.1, 3, 10) == pytest.approx(2 * 0.1 * 3 * 4.0 * 10)
    assert local_optimality_bound([torch.ones(2, 2), torch.tensor([-3.])], 1.0, 1, 7) == pytest.approx(2 * 9 * 7)
    assert local_optimality_bound({'a': th}, 0.5, 2, torch.tensor([1, 0, 1, 1])) == pytest.approx(2 * 0.5 * 2 * 4 * 3)
    c = Masks({'a': torch.tensor([True, False, True])})
    assert local_optimality_bound(th, 2.0, 1, c) == pytest.approx(2 * 2 * 1 * 4 * 2)
    assert local_optimality_bound(th, 0.1, 3, 10, gamma=0.5) == pytest.approx(2 * 0.1 * 3 * 4.0 * 10 - 1.5)
    assert local_optimality_bound(th, 0.1, 0, 10) == 0
    est = CRSEstimate(0.25, torch.tensor([0.25]), torch.tensor([1]), torch.tensor([0]), 3)
    assert local_optimality_bound(th, est, 1, 3) == pytest.approx(2 * 0.25 * 4 * 3)
    # linear in λ, p and |c_t|, quadratic in the scale of θ
    b = local_optimality_bound(th, 0.3, 2, 11)
    assert local_optimality_bound(3 * th, 0.3, 2, 11) == pytest.approx(9 * b)
    assert local_optimality_bound(th, 0.6, 2, 11) == pytest.approx(2 * b)
    for bad in (dict(lam=-1.), dict(lam=float('nan')), dict(p=-1), dict(p=1.5), dict(gamma=-0.1)):
        kw = dict(theta=th, lam=0.1, p=1, c_t=3) | bad
        with pytest.raises(ValueError): local_optimality_bound(**kw)
    with pytest.raises(ValueError): local_optimality_bound(th, 0.1, 1, -2)
    with pytest.raises(ValueError): local_optimality_bound('theta', 0.1, 1, 2)
    with pytest.raises(ValueError): local_optimality_bound([], 0.1, 1, 2)


def test_pool_pruned_for_force_steps(setup):
    "`pool='pruned'` draws S+ from every weight outside c_next: a superset of Definition 1's swaps, and FORCE steps are allowed."
    net, batches, c_t, c_next = setup
    with pytest.raises(ValueError, match="pool must be"):
        swap_gaps(net, batches, c_t, c_next, p=1, pool='all')
    rem = swap_gaps(net, batches, c_t, c_next, p=1, exhaustive=True)
    pru = swap_gaps(net, batches, c_t, c_next, p=1, exhaustive=True, pool='pruned')
    assert pru.n == c_next.kept * (c_next.total - c_next.kept) > rem.n
    assert pru.eps >= rem.eps - 1e-7                               # more swaps: the worst gap can only grow
    swaps = lambda sg: {(int(a), int(b)): float(g) for a, b, g in zip(sg.minus[:, 0], sg.plus[:, 0], sg.gap)}
    r, q = swaps(rem), swaps(pru)
    assert set(r) <= set(q) and max(abs(r[k] - q[k]) for k in r) < 1e-5
    # a FORCE step that revives a weight: refused by Definition 1's pool, measured with the pruned pool
    s = torch.cat([v.reshape(-1) for v in connection_sensitivity(net, batches, c_t).values()]).abs()
    c_force = Masks.from_flat(topk_mask(s, 14), c_t.shapes)        # top-k over all m weights (Algorithm 1)
    assert (c_force.flat() & ~c_t.flat()).any(), 'the fixture should revive a weight'
    with pytest.raises(ValueError, match='not a subset'):
        swap_gaps(net, batches, c_t, c_force, p=1)
    f = swap_gaps(net, batches, c_t, c_force, p=1, exhaustive=True, pool='pruned')
    assert f.margin >= 0 and f.n == 14 * (c_t.total - 14)
