"""`prune_at_init` and its helpers: bad input, invariants over every registered method, schedules, top-k, batches."""
import functools, itertools, math, random

import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from force_edu.masks import Masks, topk_mask, masks_from_scores, is_pruned
from force_edu.methods import (METHODS, prune_at_init, sparsity_schedule, repeat_batches, get_method,
                               model_fingerprint, same_fingerprint)

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
    X = torch.tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm], y[perm]

def digit_batches(n, bs=32, dtype=torch.float32):
    "`n` consecutive (x, y) batches of the shuffled scikit-learn digits, images 1x8x8."
    X, y = _digits()
    return [(X[i * bs:(i + 1) * bs].to(dtype), y[i * bs:(i + 1) * bs]) for i in range(n)]

def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

def cnn(bn=True, seed=0, dropout=False):
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), norm(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3), norm(8), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.5) if dropout else nn.Identity(), nn.Linear(8 * 6 * 6, 10))

def n_weights(model, types=(nn.Conv2d, nn.Linear)):
    return sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, types))

def kwargs_for(method, steps=3):
    "Small step counts (iterative) / batch groups (one-shot *_mb) so every method runs fast."
    meth = get_method(method)
    return dict(steps=steps if (meth.iterative or method.endswith('_mb')) else 1, seed=0)

def run(model, method, sparsity, n_batches=6, **kw):
    kw = {**kwargs_for(method), **kw}
    return prune_at_init(model, repeat_batches(digit_batches(n_batches)), sparsity, method, **kw)

# ---------------------------------------------------------------- bad input: clear errors, model untouched

def raises_untouched(model, match, fn, exc=ValueError):
    before = model_fingerprint(model)
    with pytest.raises(exc, match=match):
        fn()
    assert same_fingerprint(before, model_fingerprint(model))
    assert not any(is_pruned(mod) for mod in model.modules())

@pytest.mark.parametrize('sparsity', [1.0, -0.1, 1.5, math.nan, math.inf, '0.9', True, False, None])
def test_bad_sparsity(sparsity):
    model = cnn()
    raises_untouched(model, 'sparsity', lambda: prune_at_init(model, digit_batches(3), sparsity, 'snip'))

def test_sparsity_that_keeps_nothing():
    model = mlp()   # 2368 weights: 0.9999 keeps round(0.2368) = 0
    raises_untouched(model, 'keeps', lambda: prune_at_init(model, digit_batches(3), 0.9999, 'snip'))

@pytest.mark.parametrize('steps', [0, -1, 2.5, 3.0, '3', True])
@pytest.mark.parametrize('method', ['force', 'snip_mb'])
def test_bad_steps(steps, method):
    model = cnn()
    raises_untouched(model, 'steps', lambda: prune_at_init(model, digit_batches(5), 0.9, method, steps=steps))

@pytest.mark.parametrize('bps', [0, 1.5, None])
def test_bad_batches_per_step(bps):
    model = cnn()
    raises_untouched(model, 'batches_per_step',
                     lambda: prune_at_init(model, digit_batches(5), 0.9, 'force', steps=2, batches_per_step=bps))

def test_more_steps_than_weights_to_remove():
    model = mlp()   # m = 2368, 0.01 removes 24 weights
    raises_untouched(model, 'steps=30 is more than the 24',
                     lambda: prune_at_init(model, repeat_batches(digit_batches(3)), 0.01, 'force', steps=30))

def test_unknown_method_lists_known_ones():
    model = cnn()
    before = model_fingerprint(model)
    with pytest.raises(ValueError, match='unknown pruning method') as e:
        prune_at_init(model, digit_batches(3), 0.9, 'forse')
    assert all(name in str(e.value) for name in METHODS)
    assert same_fingerprint(before, model_fingerprint(model))

@pytest.mark.parametrize('model', [nn.Sequential(nn.Flatten(), nn.ReLU()),
                                   nn.Sequential(nn.BatchNorm2d(1), nn.Flatten()),
                                   nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten())])
def test_model_without_prunable_layer(model):
    raises_untouched(model, 'no prunable layer', lambda: prune_at_init(model, digit_batches(3), 0.5, 'snip'))

def test_layer_types_matching_nothing():
    model = mlp()
    raises_untouched(model, 'no prunable layer',
                     lambda: prune_at_init(model, digit_batches(3), 0.5, 'snip', layer_types=(nn.Conv2d,)))

@pytest.mark.parametrize('method,kw,needed', [('force', dict(steps=5), 5), ('iter_snip', dict(steps=4, batches_per_step=2), 8),
                                              ('grasp_it', dict(steps=5), 5), ('snip_mb', dict(steps=4), 4),
                                              ('grasp_mb', dict(steps=2, batches_per_step=3), 6)])
def test_iterable_runs_out(method, kw, needed):
    model = cnn()
    raises_untouched(model, f'needs {needed} batches, but the iterable ran out after 3',
                     lambda: prune_at_init(model, digit_batches(3), 0.9, method, **kw))
    # a generator too, and an empty iterable
    raises_untouched(model, 'ran out after 3', lambda: prune_at_init(model, (b for b in digit_batches(3)), 0.9, method, **kw))
    raises_untouched(model, 'ran out after 0', lambda: prune_at_init(model, [], 0.9, method, **kw))

def test_no_batches_for_a_data_method():
    model = cnn()
    raises_untouched(model, 'needs batches', lambda: prune_at_init(model, None, 0.9, 'snip'))

@pytest.mark.parametrize('bad', [math.nan, math.inf])
@pytest.mark.parametrize('method,bn_mode', [('snip', 'eval'), ('force', 'eval'), ('force', 'train'), ('grasp', 'eval'),
                                            ('iter_snip', 'train'), ('grasp_it', 'eval')])
def test_non_finite_loss_at_init(bad, method, bn_mode):
    model = cnn()
    bs = digit_batches(3)
    x, y = bs[0]
    x = x.clone(); x[0, 0, 3, 3] = bad
    bs[0] = (x, y)
    steps = 1 if not METHODS[method].iterative else 3
    raises_untouched(model, r'the loss is (nan|inf) on batch 0',
                     lambda: prune_at_init(model, bs, 0.9, method, steps=steps, bn_mode=bn_mode))

@pytest.mark.parametrize('bn_mode', ['training', 'Eval', None, True])
def test_bad_bn_mode(bn_mode):
    model = cnn()
    raises_untouched(model, 'bn_mode', lambda: prune_at_init(model, digit_batches(3), 0.9, 'snip', bn_mode=bn_mode))

@pytest.mark.parametrize('mode', ['cosine', 'EXP', None])
def test_bad_schedule_mode(mode):
    model = cnn()
    raises_untouched(model, 'mode must be one of',
                     lambda: prune_at_init(model, digit_batches(3), 0.9, 'force', steps=3, mode=mode))
    with pytest.raises(ValueError, match='mode'): sparsity_schedule(100, 10, 3, mode)

@pytest.mark.parametrize('batch', [torch.zeros(4, 1, 8, 8), (torch.zeros(4, 1, 8, 8),), {'x': 1, 'y': 2}])
def test_batch_that_is_not_a_pair(batch):
    model = cnn()
    raises_untouched(model, 'a batch must be a tuple', lambda: prune_at_init(model, [batch], 0.9, 'snip'))

def test_already_pruned_model():
    model = cnn()
    Masks.ones_like(model).apply(model)
    before = model_fingerprint(model)
    with pytest.raises(ValueError, match='already carry a pruning mask'):
        prune_at_init(model, digit_batches(3), 0.9, 'snip')
    assert same_fingerprint(before, model_fingerprint(model))

def _other_shape_masks():
    "Masks of a CNN with another width, with the same layer names as `cnn()`."
    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Identity(),
                          nn.Linear(8 * 6 * 6, 10))
    return Masks.ones_like(other)

@pytest.mark.parametrize('op', ['apply', 'check', 'remove'])
def test_masks_of_another_architecture(op):
    model = cnn()
    masks = _other_shape_masks()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    before = model_fingerprint(model)
    with pytest.raises(ValueError, match=r"layer '0': mask 4×1×3×3 vs weight 8×1×3×3.*layer '3'") as e:
        getattr(masks, op)(model)
    assert "'8'" not in str(e.value)   # the last layer fits
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert all(not mod._forward_pre_hooks for mod in model.modules())
    assert same_fingerprint(before, model_fingerprint(model))
    # and names the model lacks
    extra = Masks({**Masks.ones_like(model), 'head.fc': torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no layer named 'head.fc'"):
        getattr(extra, op)(model)
    assert same_fingerprint(before, model_fingerprint(model))

# ---------------------------------------------------------------- invariants over every method

ALL = sorted(METHODS)

@pytest.mark.parametrize('method', ALL)
@pytest.mark.parametrize('sparsity', [0, 0.5, 0.9, 0.99])
def test_exactly_k_kept(method, sparsity):
    model = cnn()
    m = n_weights(model)
    masks = run(model, method, sparsity)
    k = int(round((1 - sparsity) * m))
    assert masks.kept == k and masks.total == m
    assert all(c.dtype == torch.bool for c in masks.values())
    if sparsity == 0:
        assert masks == Masks.ones_like(model)

def test_exactly_k_for_awkward_sparsities():
    model = mlp()
    m = n_weights(model)
    for s in (0.123456, 0.5 - 0.5 / m, 0.5 + 0.5 / m, 1 - 1.5 / m, 1e-9):
        for method in ('force', 'iter_snip', 'snip', 'random'):
            kw = dict(steps=1) if s == 1 - 1.5 / m or s == 1e-9 else {}
            assert run(model, method, s, **kw).kept == int(round((1 - s) * m))

def test_ties_everywhere_still_exactly_k():
    "A zero-initialised network: every saliency is 0 (ties everywhere); still exactly k, the lowest indices."
    model = mlp()
    for p in model.parameters(): nn.init.zeros_(p)
    m = n_weights(model)
    for method in ('snip', 'force', 'iter_snip', 'grasp_it', 'magnitude', 'grasp'):
        masks = run(model, method, 0.75)
        assert masks.kept == m // 4
        assert torch.equal(masks.flat(), torch.arange(m) < m // 4)

@pytest.mark.parametrize('method', ALL)
def test_deterministic(method):
    model = cnn()
    a, b = run(model, method, 0.9), run(model, method, 0.9)
    assert a == b

def test_random_seed():
    model = cnn()
    s0 = run(model, 'random', 0.9, seed=0)
    assert run(model, 'random', 0.9, seed=0) == s0
    assert run(model, 'random', 0.9, seed=1) != s0
    assert run(model, 'random', 0.9, seed=None) != run(model, 'random', 0.9, seed=None)

@pytest.mark.parametrize('method', ALL)
@pytest.mark.parametrize('bn_mode', ['eval', 'train'])
def test_model_unchanged(method, bn_mode):
    "Parameters, buffers, .grad, requires_grad, per-module modes, hooks and Parameter identities all survive."
    model = cnn(dropout=True)
    x, y = digit_batches(1)[0]
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()          # .grad populated, BN stats moved
    model[1].eval()                                              # one module in eval mode
    model[3].weight.requires_grad_(False)                        # a prunable weight frozen
    model[4].bias.requires_grad_(False)                          # and a BN bias
    calls = []
    model[2].register_forward_hook(lambda mod, i, o: calls.append(1))
    before = model_fingerprint(model)
    params = list(model.parameters())
    masks = run(model, method, 0.9, bn_mode=bn_mode)
    assert masks.kept == int(round(0.1 * n_weights(model)))
    assert same_fingerprint(before, model_fingerprint(model))
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert model.training and not model[1].training and model[4].training
    assert not any(is_pruned(mod) for mod in model.modules())

@pytest.mark.parametrize('method', ['snip', 'force', 'grasp', 'grasp_it', 'synflow', 'magnitude'])
def test_inside_no_grad(method):
    model = cnn()
    want = run(model, method, 0.9)
    before = model_fingerprint(model)
    with torch.no_grad():
        got = run(model, method, 0.9)
    assert got == want
    assert same_fingerprint(before, model_fingerprint(model))
    assert torch.is_grad_enabled()

def test_inside_inference_mode():
    model = cnn()
    want = run(model, 'force', 0.9)
    with torch.inference_mode():
        got = run(model, 'force', 0.9)
    assert got == want

@pytest.mark.parametrize('method', ['snip', 'force', 'grasp_it'])
def test_batch_forms(method):
    "Tuples, lists [x, y], fastai tensor subclasses, a generator and a DataLoader all give the same mask."
    from fastai.torch_core import TensorImage, TensorCategory
    model = cnn()
    bs = digit_batches(3)
    kw = dict(steps=3 if METHODS[method].iterative else 1)
    want = prune_at_init(model, bs, 0.9, method, **kw)
    forms = {'list': [[x, y] for x, y in bs],
             'fastai': [(TensorImage(x), TensorCategory(y)) for x, y in bs],
             'generator': (b for b in bs),
             'dataloader': torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
                 torch.cat([x for x, _ in bs]), torch.cat([y for _, y in bs])), batch_size=32, shuffle=False)}
    for name, batches in forms.items():
        assert prune_at_init(model, batches, 0.9, method, **kw) == want, name

def test_fastai_batches_really_are_subclasses():
    from fastai.torch_core import TensorImage
    x = TensorImage(digit_batches(1)[0][0])
    assert type(x) is TensorImage and type(x) is not torch.Tensor

def test_batches_consumed_in_order():
    "Step t uses batch t: permuting the batches changes a FORCE mask, repeating the first batch is not the same."
    model = mlp()
    bs = digit_batches(5)
    a = prune_at_init(model, bs, 0.98, 'force', steps=5)
    assert prune_at_init(model, iter(bs + digit_batches(10)[5:]), 0.98, 'force', steps=5) == a  # extra batches unused
    assert prune_at_init(model, bs[::-1], 0.98, 'force', steps=5) != a

def test_layer_types_narrow_and_widen():
    model = cnn()
    full = run(model, 'snip', 0.9)
    assert list(full) == ['0', '3', '8']
    lin = run(model, 'snip', 0.9, layer_types=(nn.Linear,))
    assert list(lin) == ['8'] and lin.total == 8 * 6 * 6 * 10 and lin.kept == round(0.1 * lin.total)
    torch.manual_seed(0)
    model1d = nn.Sequential(nn.Flatten(2), nn.Conv1d(1, 4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 60, 10))
    assert list(run(model1d, 'force', 0.9)) == ['4']
    wide = run(model1d, 'force', 0.9, layer_types=(nn.Conv1d, nn.Conv2d, nn.Linear))
    assert list(wide) == ['1', '4'] and wide.total == 4 * 5 + 240 * 10
    assert wide.kept == round(0.1 * wide.total)
    assert wide['1'].shape == model1d[1].weight.shape

@pytest.mark.parametrize('method', ALL)
def test_biases_and_batchnorm_never_masked(method):
    model = cnn()
    masks = run(model, method, 0.5)
    mods = dict(model.named_modules())
    assert all(isinstance(mods[n], (nn.Conv2d, nn.Linear)) for n in masks)
    assert {n: c.shape for n, c in masks.items()} == {n: mods[n].weight.shape for n in masks}
    assert masks.total == n_weights(model) < sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------- schedules

@pytest.mark.parametrize('mode', ['exp', 'linear'])
def test_schedule_random(mode):
    rng = random.Random(0)
    for _ in range(3000):
        m = rng.choice([rng.randint(2, 30), rng.randint(2, 3000), rng.randint(2, 10**7)])
        k = rng.randint(1, m - 1)
        T = rng.randint(1, min(m - k, rng.choice([5, 50, 500])))
        ks = sparsity_schedule(m, k, T, mode)
        assert len(ks) == T and ks[-1] == k and all(isinstance(x, int) for x in ks)
        assert all(a > b for a, b in zip([m] + ks, ks))   # strictly decreasing from m
        assert all(k + T - t <= kt for t, kt in enumerate(ks, 1))      # room left for the remaining steps
        # eq. 8/9 rounded, unless clamped: to prev - 1 (strictly decreasing) or to k + T - t (room for the steps left)
        prev = m
        for t, kt in enumerate(ks, 1):
            a = t / T
            want = a * k + (1 - a) * m if mode == 'linear' else math.exp(a * math.log(k) + (1 - a) * math.log(m))
            assert kt in (round(want), prev - 1, k + T - t) and kt <= max(round(want), k + T - t)
            prev = kt

def test_schedule_is_the_rounded_formula_when_steps_are_few():
    m, k, T = 10_000, 100, 10
    exp = [round(math.exp(t / T * math.log(k) + (1 - t / T) * math.log(m))) for t in range(1, T + 1)]
    assert sparsity_schedule(m, k, T, 'exp') == exp == [6310, 3981, 2512, 1585, 1000, 631, 398, 251, 158, 100]
    assert sparsity_schedule(m, k, T, 'linear') == [round(m - (m - k) * t / T) for t in range(1, T + 1)]
    assert sparsity_schedule(m, k, 1) == [k]

def test_schedule_tight():
    assert sparsity_schedule(10, 5, 5) == [9, 8, 7, 6, 5]
    assert sparsity_schedule(10, 5, 5, 'linear') == [9, 8, 7, 6, 5]
    assert sparsity_schedule(2, 1, 1) == [1]

@pytest.mark.parametrize('args', [(10, 5, 6), (10, 10, 1), (10, 0, 1), (10, 11, 1), (10, 5, 0), (10, 5, 2.0), (10, 5, True)])
def test_schedule_bad(args):
    with pytest.raises(ValueError):
        sparsity_schedule(*args)

# ---------------------------------------------------------------- top-k

def stable_topk(scores, k):
    s = scores.tolist()
    keep = torch.zeros(len(s), dtype=torch.bool)
    keep[sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]] = True
    return keep

def test_topk_random_with_ties():
    g = torch.Generator().manual_seed(0)
    for trial in range(400):
        n = int(torch.randint(1, 200, (), generator=g))
        levels = int(torch.randint(1, 8, (), generator=g))
        scores = torch.randint(-3, levels, (n,), generator=g).float()
        if trial % 3 == 0: scores = torch.randn(n, generator=g)
        if trial % 5 == 0: scores[torch.rand(n, generator=g) < 0.3] = -math.inf
        if trial % 7 == 0: scores = scores.double()
        k = int(torch.randint(0, n + 1, (), generator=g))
        got = topk_mask(scores, k)
        assert got.dtype == torch.bool and int(got.sum()) == k
        assert torch.equal(got, stable_topk(scores, k)), (scores, k)
        # any shape is flattened
        if n % 4 == 0: assert torch.equal(topk_mask(scores.view(4, -1), k), got)

def test_topk_bad():
    with pytest.raises(ValueError): topk_mask(torch.ones(3), 4)
    with pytest.raises(ValueError): topk_mask(torch.ones(3), -1)
    with pytest.raises(ValueError, match='NaN'): topk_mask(torch.tensor([1., math.nan, 0.]), 1)

def test_masks_from_scores_global_ties():
    "Ties across layers go to the earlier layer (lower flat index)."
    m = masks_from_scores({'a': torch.tensor([1., 2.]), 'b': torch.tensor([[2., 3.], [2., 0.]])}, 3)
    assert m['a'].tolist() == [False, True] and m['b'].tolist() == [[True, True], [False, False]]

def test_float64_scores_not_rounded_to_float32():
    assert masks_from_scores({'a': torch.tensor([1.0, 1.0 + 1e-10], dtype=torch.float64)}, 1)['a'].tolist() == [False, True]

def test_float64_model_magnitude_precision():
    lin = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad(): lin.weight.copy_(torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64))
    x = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    assert prune_at_init(lin, [x], 0.5, 'magnitude')[''].tolist() == [[False, True]]

@pytest.mark.parametrize('method', ['random', 'magnitude'])
def test_data_free_methods_without_batches(method):
    model = mlp()
    assert prune_at_init(model, None, 0.9, method, seed=0).kept == round(0.1 * n_weights(model))

# ---------------------------------------------------------------- repeat_batches

def test_repeat_batches_cycles():
    assert list(repeat_batches([1, 2, 3], 7)) == [1, 2, 3, 1, 2, 3, 1]
    assert list(repeat_batches([1, 2, 3], 0)) == []
    assert list(itertools.islice(repeat_batches([1, 2]), 5)) == [1, 2, 1, 2, 1]
    dl = torch.utils.data.DataLoader(torch.arange(10), batch_size=4, shuffle=True,
                                     generator=torch.Generator().manual_seed(0))
    out = list(repeat_batches(dl, 9))
    assert len(out) == 9 and [len(b) for b in out] == [4, 4, 2] * 3
    epochs = [torch.cat(out[i:i + 3]) for i in (0, 3, 6)]
    assert all(sorted(e.tolist()) == list(range(10)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1]) or not torch.equal(epochs[1], epochs[2])  # reshuffled per pass

def test_repeat_batches_empty():
    with pytest.raises(ValueError, match='empty'):
        next(repeat_batches([]))
    with pytest.raises(ValueError, match='empty'):
        list(repeat_batches(torch.utils.data.DataLoader(torch.arange(0)), 3))

def test_repeat_batches_feeds_many_steps():
    model = mlp()
    bs = digit_batches(3)
    a = prune_at_init(model, repeat_batches(bs), 0.9, 'force', steps=7)
    assert a == prune_at_init(model, (bs * 3)[:7], 0.9, 'force', steps=7)

# ---------------------------------------------------------------- hand-computed progressive runs

def _tiny_linear():
    "L = w . x (one output, summed): saliency |w_j x_j|, gradient x_j; weights [1, 2, 3, 4]."
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad(): lin.weight.copy_(torch.tensor([[1., 2., 3., 4.]]))
    return lin

def _tiny_run(method):
    y = torch.zeros(1, dtype=torch.long)
    bs = [(torch.tensor([[1., 1., 1., 1.]]), y), (torch.tensor([[1., 0., 0., 1.]]), y), (torch.tensor([[1., 1., 1., 1.]]), y)]
    seen = []
    final = prune_at_init(_tiny_linear(), bs, 0.75, method, steps=3, loss_func=lambda o, t: o.sum(),
                          on_step=lambda t, kt, m: seen.append((t, kt, m[''].view(-1).tolist())))
    return seen, final[''].view(-1).tolist()

def test_tiny_progressive_by_hand():
    """Schedule 4 -> [3, 2, 1]. Step 1 (x = 1): saliency [1, 2, 3, 4], drop w0. Step 2 (x = [1, 0, 0, 1]):
    FORCE saliency |theta * x| = [1, 0, 0, 4] over all weights brings w0 back; Iter-SNIP and GRASP-It
    only choose among the alive w1..w3, where w1 and w2 tie at 0 and the lower index wins. GRASP-It's
    saliency grad^2 = x^2 ties everywhere at step 1, so it keeps the lowest indices."""
    F_, T_ = False, True
    seen, final = _tiny_run('force')
    assert seen == [(0, 3, [F_, T_, T_, T_]), (1, 2, [T_, F_, F_, T_]), (2, 1, [F_, F_, F_, T_])] and final == [F_, F_, F_, T_]
    seen, final = _tiny_run('iter_snip')
    assert seen == [(0, 3, [F_, T_, T_, T_]), (1, 2, [F_, T_, F_, T_]), (2, 1, [F_, F_, F_, T_])]
    seen, final = _tiny_run('grasp_it')
    assert seen == [(0, 3, [T_, T_, T_, F_]), (1, 2, [T_, T_, F_, F_]), (2, 1, [T_, F_, F_, F_])]

def test_on_step_nested_and_sizes():
    "Iter-SNIP / GRASP-It masks are nested; every method's c_t keeps exactly k_t; FORCE resurrects on real data."
    model = cnn()
    m = n_weights(model)
    for method in ('force', 'iter_snip', 'grasp_it', 'synflow'):
        seen = []
        final = prune_at_init(model, digit_batches(8), 0.99, method, steps=8,
                              on_step=lambda t, kt, masks: seen.append((t, kt, masks.flat())))
        ks = sparsity_schedule(m, final.kept, 8)
        assert [t for t, _, _ in seen] == list(range(8)) and [kt for _, kt, _ in seen] == ks
        assert all(int(c.sum()) == kt for _, kt, c in seen)
        assert torch.equal(seen[-1][2], final.flat())
        nested = all(bool((b & ~a).sum() == 0) for (_, _, a), (_, _, b) in zip(seen, seen[1:]))
        assert nested == (method != 'force'), method

# ---------------------------------------------------------------- no model copies

def test_no_deepcopy(monkeypatch):
    "No method copies the model: every one runs with `copy.deepcopy` and the modules' and tensors' `__deepcopy__` disabled."
    import copy
    model, bs = cnn(dropout=True), digit_batches(6)        # built before the patch
    real_deepcopy = copy.deepcopy
    def no_copy(*args, **kwargs): raise AssertionError('prune_at_init must not deepcopy the model or its tensors')
    monkeypatch.setattr(copy, 'deepcopy', no_copy)
    monkeypatch.setattr(nn.Module, '__deepcopy__', no_copy, raising=False)
    monkeypatch.setattr(torch.Tensor, '__deepcopy__', no_copy)
    monkeypatch.setattr(nn.Parameter, '__deepcopy__', no_copy)
    with pytest.raises(AssertionError, match='must not deepcopy'): real_deepcopy(model)   # the patch bites
    with pytest.raises(AssertionError, match='must not deepcopy'): real_deepcopy(model[0].weight)
    before = model_fingerprint(model)
    for method in METHODS:
        masks = prune_at_init(model, repeat_batches(bs), 0.9, method, **kwargs_for(method))
        assert masks.kept == int(round(0.1 * n_weights(model))), method
    assert same_fingerprint(before, model_fingerprint(model))

# ---------------------------------------------------------------- cuDNN flags (set on a GPU only, always restored)

@pytest.fixture
def cudnn_flags():
    "Odd cuDNN flags for the test (deterministic off, autotuning on); the session's flags restored afterwards."
    cudnn = torch.backends.cudnn
    prev = cudnn.deterministic, cudnn.benchmark
    cudnn.deterministic, cudnn.benchmark = False, True
    yield cudnn
    cudnn.deterministic, cudnn.benchmark = prev

def test_cudnn_deterministic_context_restores_flags(cudnn_flags):
    from force_edu.methods import _cudnn_deterministic
    flags = lambda: (cudnn_flags.deterministic, cudnn_flags.benchmark)
    with _cudnn_deterministic(True):
        assert flags() == (True, False)
    assert flags() == (False, True)
    with pytest.raises(RuntimeError, match='boom'):
        with _cudnn_deterministic(True): raise RuntimeError('boom')
    assert flags() == (False, True)
    with _cudnn_deterministic(False):
        assert flags() == (False, True)   # the CPU path leaves them alone

@pytest.mark.parametrize('method', ['force', 'iter_snip', 'snip'])
def test_cpu_run_leaves_cudnn_flags_alone(cudnn_flags, method):
    "On the CPU the flags are not touched, not even during the run; the mask is the same whatever they are."
    seen = []
    model = cnn()
    got = run(model, method, 0.9, on_step=lambda t, k, c: seen.append((cudnn_flags.deterministic, cudnn_flags.benchmark)))
    assert all(f == (False, True) for f in seen) and (cudnn_flags.deterministic, cudnn_flags.benchmark) == (False, True)
    assert len(seen) == (3 if METHODS[method].iterative else 0)
    cudnn_flags.deterministic, cudnn_flags.benchmark = True, False
    assert run(model, method, 0.9) == got
