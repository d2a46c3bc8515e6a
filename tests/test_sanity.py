"""Sanity checks of pruning at initialization (`force_edu.sanity`): shuffling within layers, re-initialisation,
ERK and smart-ratio masks with exactly k weights, and inputs that are never modified."""
import copy, math, random

import pytest
import torch
import torch.nn as nn

from force_edu.masks import Masks, prunable_layers
from force_edu.methods import prune_at_init, model_fingerprint, same_fingerprint
from force_edu.sanity import (ABLATIONS, ablate, capped_densities, density_mask, density_table, erk_densities, erk_mask,
                              layer_counts, layer_shapes, random_layer_mask, reinit_model, shuffle_within_layers,
                              smart_ratio_densities, smart_ratio_mask)


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Tiny models: one intra-op thread is much faster than two on a shared machine."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))


def random_shapes(rng, n_layers=None):
    "A made-up network: a few conv-like 4-D layers and 2-D linear layers of random sizes (some of one weight)."
    shapes = {}
    for i in range(n_layers or rng.randint(1, 8)):
        if rng.random() < 0.3: shapes[f'fc{i}'] = (rng.randint(1, 40), rng.randint(1, 60))
        else: shapes[f'conv{i}'] = (rng.randint(1, 24), rng.randint(1, 16), rng.choice([1, 3, 5]), rng.choice([1, 3]))
    return shapes


def random_mask(shapes, density, seed):
    g = torch.Generator().manual_seed(seed)
    return Masks({n: torch.rand(s, generator=g) < density for n, s in shapes.items()})


def copy_masks(masks): return Masks({n: c.clone() for n, c in masks.items()})


def one_line_value_error(f, contains):
    with pytest.raises(ValueError) as e: f()
    msg = str(e.value)
    assert contains in msg, msg
    assert '\n' not in msg, f"not one line: {msg!r}"


# --- shuffling -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('density', [0.02, 0.3, 0.7, 0.97])
@pytest.mark.parametrize('seed', range(3))
def test_shuffle_keeps_every_layer_count_and_changes_the_mask(density, seed):
    shapes = {'a': (16, 8, 3, 3), 'b': (32, 16, 3, 3), 'c': (10, 200)}
    masks = random_mask(shapes, density, seed)
    before = copy_masks(masks)
    out = shuffle_within_layers(masks, seed=seed + 100)
    assert out.layer_kept() == masks.layer_kept() and out.kept == masks.kept and out.shapes == masks.shapes
    assert out != masks                       # some kept weight moved (layers are neither empty nor full)
    assert masks == before                    # the input is not modified
    assert shuffle_within_layers(masks, seed=seed + 100) == out   # a seed fixes the shuffle
    assert shuffle_within_layers(masks, seed=seed + 101) != out


def test_shuffle_of_empty_and_full_layers_is_the_same_mask():
    masks = Masks({'empty': torch.zeros(3, 4, dtype=torch.bool), 'full': torch.ones(5, dtype=torch.bool)})
    assert shuffle_within_layers(masks, seed=0) == masks


def test_shuffle_moves_kept_weights_as_often_as_chance_says():
    "Overlap with the original in a 1000-weight layer with 100 kept: hypergeometric, mean 10, sd about 2.8."
    masks = random_mask({'a': (1000,)}, 0.1, 0)
    kl = masks.kept
    overlaps = [int((shuffle_within_layers(masks, seed=s)['a'] & masks['a']).sum()) for s in range(300)]
    mean = sum(overlaps) / len(overlaps)
    expected = kl * kl / 1000
    assert abs(mean - expected) < 1.0, (mean, expected)


def test_shuffle_of_a_real_mask():
    model = cnn()
    X = torch.randn(64, 1, 8, 8); y = torch.randint(0, 10, (64,))
    masks = prune_at_init(model, [(X, y)], 0.95, 'snip')
    out = shuffle_within_layers(masks, seed=0)
    assert out.layer_kept() == masks.layer_kept() and out != masks


# --- exact counts, ERK, smart ratios -----------------------------------------------------------------------------------

def _check_exact(densities, shapes, k, masks=None):
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert all(0 <= d <= 1 for d in densities.values()), densities
    assert abs(sum(densities[n] * sizes[n] for n in shapes) - k) < 1e-6 * max(k, 1)
    counts = layer_counts(densities, shapes, k)
    assert sum(counts.values()) == k
    for n in shapes:
        x = densities[n] * sizes[n]
        assert 0 <= counts[n] <= sizes[n]
        assert math.floor(x) - 1e-9 <= counts[n] <= math.ceil(x) + 1e-9 or abs(counts[n] - x) < 1e-6, (n, x, counts[n])
    if masks is not None:
        assert masks.kept == k and masks.layer_kept() == counts and masks.shapes == {n: torch.Size(s) for n, s in shapes.items()}


@pytest.mark.parametrize('case', range(40))
def test_erk_and_smart_ratio_keep_exactly_k_and_no_layer_above_one(case):
    rng = random.Random(case)
    shapes = random_shapes(rng)
    m = sum(math.prod(s) for s in shapes.values())
    ks = {0, 1, 2, min(5, m), m // 100, m // 10, m // 2, m - 1 if m > 1 else m, max(m - len(shapes), 0), m, rng.randint(0, m)}
    for k in sorted(ks):
        for dens in (erk_densities(shapes, k), smart_ratio_densities(shapes, k), smart_ratio_densities(shapes, k, l2_decay=True),
                     smart_ratio_densities(shapes, k, linear_density=0.9)):
            _check_exact(dens, shapes, k)
        _check_exact(erk_densities(shapes, k), shapes, k, erk_mask(shapes, k, seed=case))
        _check_exact(smart_ratio_densities(shapes, k), shapes, k, smart_ratio_mask(shapes, k, seed=case))


def test_capped_densities_solve_the_capped_problem():
    "The result is the solution of d_l = min(1, c w_l) with sum d_l n_l = k: one c for every uncapped layer, capped ones need c w_l >= 1."
    rng = random.Random(0)
    for case in range(200):
        shapes = random_shapes(rng)
        w = {n: rng.uniform(0.01, 10) for n in shapes}
        m = sum(math.prod(s) for s in shapes.values())
        k = rng.uniform(0, m)
        d = capped_densities(w, shapes, k)
        assert abs(sum(d[n] * math.prod(s) for n, s in shapes.items()) - k) < 1e-6 * max(m, 1)
        free = [n for n in shapes if d[n] < 1]
        if not free: continue
        c = d[free[0]] / w[free[0]]
        assert all(abs(d[n] / w[n] - c) <= 1e-9 * c for n in free)
        assert all(c * w[n] >= 1 - 1e-9 for n in shapes if d[n] == 1)


def test_erk_and_smart_ratio_formulas():
    shapes = {'c1': (16, 3, 3, 3), 'c2': (32, 16, 3, 3), 'c3': (64, 32, 3, 3), 'fc': (10, 64)}
    k = 1000
    d = erk_densities(shapes, k)
    w = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    assert all(abs(d[n] / w[n] - d['c3'] / w['c3']) < 1e-9 for n in shapes if d[n] < 1)
    d = smart_ratio_densities(shapes, k)
    assert d['fc'] == pytest.approx(0.3)
    raw = {'c1': 4 ** 2 + 4, 'c2': 3 ** 2 + 3, 'c3': 2 ** 2 + 2}   # (L - l + 1)^2 + (L - l + 1), L = 4
    assert d['c1'] / raw['c1'] == pytest.approx(d['c3'] / raw['c3']) and d['c2'] / raw['c2'] == pytest.approx(d['c3'] / raw['c3'])
    d = smart_ratio_densities(shapes, k, l2_decay=True)
    assert d['c2'] / raw['c2'] * 4 == pytest.approx(d['c1'] / raw['c1']) and d['c3'] / raw['c3'] * 9 == pytest.approx(d['c1'] / raw['c1'])
    # an MLP has no other layers to share the budget with: every layer follows the rule
    mlp = {'fc1': (300, 784), 'fc2': (100, 300), 'fc3': (10, 100)}
    d = smart_ratio_densities(mlp, 2000)
    assert d['fc1'] / 12 == pytest.approx(d['fc3'] / 2)


def test_layer_counts_ties_go_to_the_earlier_layer():
    shapes = {'a': (6,), 'b': (6,), 'c': (6,), 'd': (6,)}
    assert layer_counts({n: 0.25 for n in shapes}, shapes, 6) == {'a': 2, 'b': 2, 'c': 1, 'd': 1}
    assert layer_counts({'a': 0.5, 'b': 0.5}, {'a': (3,), 'b': (3,)}, 3) == {'a': 2, 'b': 1}


def test_random_masks_are_random_within_layers_and_seeded():
    shapes = {'a': (20, 30), 'b': (7, 7, 3, 3)}
    a, b = erk_mask(shapes, 100, seed=0), erk_mask(shapes, 100, seed=1)
    assert a.layer_kept() == b.layer_kept() and a != b and erk_mask(shapes, 100, seed=0) == a
    state = torch.random.get_rng_state()
    smart_ratio_mask(shapes, 100, seed=0); erk_mask(shapes, 100); density_mask({'a': 0.1, 'b': 0.0}, shapes, 60, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)   # the global RNG is left alone


def test_model_and_masks_give_the_same_shapes():
    model = cnn()
    assert layer_shapes(model) == Masks.ones_like(model).shapes == layer_shapes(Masks.ones_like(model))
    assert erk_mask(model, 50, seed=0) == erk_mask(Masks.ones_like(model), 50, seed=0)


def test_density_table():
    model = cnn()
    masks = {'erk': erk_mask(model, 300, seed=0), 'smart': smart_ratio_mask(model, 300, seed=0)}
    t = density_table(masks)
    assert list(t.index) == list(masks['erk']) + ['total']
    assert list(t['erk'][:-1]) == list(masks['erk'].layer_density().values())
    assert t.loc['total', 'smart'] == masks['smart'].density
    assert list(density_table(masks['erk'], 'kept')['mask']) == list(masks['erk'].layer_kept().values()) + [300]


# --- ablations never modify their inputs -------------------------------------------------------------------------

def kaiming(model):
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)): nn.init.kaiming_normal_(mod.weight, nonlinearity='relu')


@pytest.mark.parametrize('kind', ABLATIONS)
@pytest.mark.parametrize('init', [None, kaiming])
def test_ablation_never_modifies_its_inputs(kind, init):
    model = cnn()
    masks = erk_mask(model, 200, seed=0)
    fp, before, grads_state = model_fingerprint(model), copy_masks(masks), torch.random.get_rng_state()
    new_masks, new_model = ablate(masks, model, kind, seed=5, init=init)
    assert same_fingerprint(fp, model_fingerprint(model)) and masks == before
    if kind == 'shuffle': assert new_masks != before and new_masks.layer_kept() == before.layer_kept()
    else: assert new_masks == before and not torch.equal(new_model[0].weight, model[0].weight)
    assert torch.equal(torch.random.get_rng_state(), grads_state)
    assert new_model is not model and new_masks is not masks
    assert not any(p.data_ptr() == q.data_ptr() for p, q in zip(new_model.parameters(), model.parameters()))
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(new_masks.values(), masks.values()))
    # training what ablate returned leaves the inputs alone too
    new_masks.apply(new_model)
    with torch.no_grad():
        for p in new_model.parameters(): p.add_(1.)
    for c in new_masks.values(): c.fill_(True)
    assert same_fingerprint(fp, model_fingerprint(model)) and masks == before


def test_reinit_replaces_exactly_the_prunable_weights():
    model = cnn()
    for init in (None, kaiming):
        new = reinit_model(model, seed=1, init=init)
        for name, t in model.state_dict().items():
            changed = not torch.equal(t, new.state_dict()[name])
            assert changed == (name in ('0.weight', '3.weight', '7.weight')), name
        same = reinit_model(model, seed=1, init=init)
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), same.state_dict().values()))


def test_reinit_with_the_sweep_init_draws_from_kaiming_normal():
    from force_edu.sweep import kaiming_init, small_vgg
    model = kaiming_init(small_vgg(1, 10, 16))
    new = reinit_model(model, seed=3, init=kaiming_init)
    for name, mod in prunable_layers(new).items():
        n, fan_in = mod.weight.numel(), mod.weight[0].numel()
        assert not torch.equal(mod.weight, prunable_layers(model)[name].weight)
        assert abs(mod.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 5 / math.sqrt(2 * n), name


def test_reinit_only_the_masked_layers():
    model = cnn()
    masks = Masks({'3': torch.ones(16, 8, 3, 3, dtype=torch.bool)})
    _, new = ablate(masks, model, 'reinit', seed=0)
    assert torch.equal(new[0].weight, model[0].weight) and not torch.equal(new[3].weight, model[3].weight)


# --- bad input: one-line ValueErrors, inputs unchanged --------------------------------------------------------

def test_bad_input_gives_one_line_value_errors():
    model = cnn()
    m = Masks.ones_like(model).total
    masks = erk_mask(model, 100, seed=0)
    before, fp = copy_masks(masks), model_fingerprint(model)
    for f in (erk_densities, smart_ratio_densities, erk_mask, smart_ratio_mask):
        one_line_value_error(lambda: f(model, m + 1), f'cannot keep k={m + 1}')
        one_line_value_error(lambda: f(model, -1), 'cannot keep k=-1')
        one_line_value_error(lambda: f(model, 2.5), 'cannot keep k=2.5')
        one_line_value_error(lambda: f(model, True), 'cannot keep k=True')
    one_line_value_error(lambda: ablate(masks, model, 'invert'), 'kind must be one of shuffle, reinit')
    one_line_value_error(lambda: ablate(masks, model, 'none'), 'kind must be one of')
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 10))
    one_line_value_error(lambda: ablate(masks, other, 'shuffle'), 'do not fit')
    one_line_value_error(lambda: ablate(masks, other, 'reinit'), 'do not fit')
    one_line_value_error(lambda: ablate(masks.layer_kept(), model, 'shuffle'), 'expected a Masks')
    one_line_value_error(lambda: ablate(masks, 'model', 'shuffle'), 'expected an nn.Module')
    one_line_value_error(lambda: ablate(masks, model, 'shuffle', seed=-3), 'seed must be')
    one_line_value_error(lambda: ablate(masks, model, 'reinit', init=3), 'init must be')
    pruned = cnn(); masks.apply(pruned)
    one_line_value_error(lambda: ablate(masks, pruned, 'shuffle'), 'already carries a pruning mask')
    one_line_value_error(lambda: reinit_model(pruned, seed=0), 'already carries a pruning mask')
    one_line_value_error(lambda: shuffle_within_layers(model), 'expected a Masks')
    one_line_value_error(lambda: smart_ratio_densities(model, 10, linear_density=1.5), 'linear_density must be')
    one_line_value_error(lambda: layer_counts({'a': 0.5}, {'a': (4,)}, 3), 'keep 2.0 weights, not k=3')
    one_line_value_error(lambda: layer_counts({'a': 0.5, 'b': 0.5}, {'b': (4,), 'a': (4,)}, 4), 'other layers')
    one_line_value_error(lambda: random_layer_mask({'a': (2, 2)}, {'a': 5}), 'cannot keep 5 of its 4')
    one_line_value_error(lambda: layer_shapes({'a': (2, -1)}), 'positive integers')
    one_line_value_error(lambda: density_table({}), 'non-empty mapping')
    one_line_value_error(lambda: density_table({'a': masks, 'b': Masks.ones_like(other)}), 'different layers')
    assert masks == before and same_fingerprint(fp, model_fingerprint(model))


# --- the methods module: erk and smart_ratio registered, inverted scores -----------------------------------------------

def digit_batches(n, bs=32):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8); y = torch.tensor(y, dtype=torch.long)
    return [(X[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs]) for i in range(n)]


@pytest.mark.parametrize('name', ['erk', 'smart_ratio'])
def test_density_baselines_are_data_free_methods(name):
    from force_edu.methods import METHODS
    meth = METHODS[name]
    assert not meth.uses_data and not meth.iterative and not meth.scored
    model = cnn()
    fp = model_fingerprint(model)
    ref = erk_mask if name == 'erk' else smart_ratio_mask
    for sparsity in (0.5, 0.9, 0.99, 0.999):
        c = prune_at_init(model, None, sparsity, name, seed=4)
        k = round((1 - sparsity) * c.total)
        assert c.kept == k and c == ref(model, k, seed=4)
    assert same_fingerprint(fp, model_fingerprint(model))


def test_inverted_snip_is_the_complement_of_snip_when_scores_do_not_tie():
    model, bs = cnn(), digit_batches(1)
    m = Masks.ones_like(model).total
    fp = model_fingerprint(model)
    inv = prune_at_init(model, bs, 0.9, 'snip', invert=True)
    k = inv.kept
    assert torch.equal(inv.flat(), ~prune_at_init(model, bs, k / m, 'snip').flat())
    assert same_fingerprint(fp, model_fingerprint(model))


@pytest.mark.parametrize('method', ['iter_snip', 'force', 'synflow', 'grasp_it'])
def test_inverted_iterative_methods_invert_every_step(method):
    "Each step keeps k_t weights; with eq. 7 inside the previous mask; never the same masks as the method itself."
    from force_edu.methods import METHODS, repeat_batches, sparsity_schedule
    model = cnn()
    fp = model_fingerprint(model)
    seen, plain = [], []
    prune_at_init(model, repeat_batches(digit_batches(3)), 0.95, method, steps=4, invert=True, on_step=lambda t, k, c: seen.append(c.flat()))
    prune_at_init(model, repeat_batches(digit_batches(3)), 0.95, method, steps=4, on_step=lambda t, k, c: plain.append(c.flat()))
    m = Masks.ones_like(model).total
    assert [int(c.sum()) for c in seen] == sparsity_schedule(m, round(0.05 * m), 4)
    assert all(not torch.equal(a, b) for a, b in zip(seen, plain))   # inverted at the first step already, and at every later one
    if method != 'force':
        assert all(int((b & ~a).sum()) == 0 for a, b in zip(seen, seen[1:]))
    assert same_fingerprint(fp, model_fingerprint(model))


def test_invert_bad_input():
    model = cnn()
    for name in ('random', 'erk', 'smart_ratio'):
        one_line_value_error(lambda: prune_at_init(model, None, 0.9, name, invert=True), 'ranks no scores')
    one_line_value_error(lambda: prune_at_init(model, digit_batches(1), 0.9, 'snip', invert=1), 'invert must be True or False')


# --- the sweep: ablation runs, and the keys of every committed record ---------------------------------------------

def legacy_run_key(rec):
    "`run_key` as it was before the `ablation` option (commit a09a574): what every committed record was stored under."
    import json
    from force_edu.methods import METHODS
    from force_edu.sweep import TRAIN_FIELDS, PRUNE_FIELDS, pruning_fields
    if rec.get('temperature') is None: rec = {**rec, 'temperature': 1.}   # every method's default then (GRASP's is 200 since)
    k = {f: rec.get(f) for f in ('method', 'seed') + TRAIN_FIELDS}
    k['sparsity'] = round(float(rec['sparsity']), 10)
    k.update(pruning_fields(rec['method'], rec) if rec['method'] == 'dense' or rec['method'] in METHODS else
             {f: rec.get(f) for f in PRUNE_FIELDS})
    for f, default in {'temperature': 1., 'samples_per_class': None}.items():
        if k.get(f) in (None, default): k.pop(f, None)
    return json.dumps(k, sort_keys=True)


def _committed_results():
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(['git', 'ls-files', 'nbs/tutorials/sweeps/*/results.json'], cwd=root, capture_output=True, text=True)
    return [root / p for p in out.stdout.split()] if out.returncode == 0 else sorted(root.glob('nbs/tutorials/sweeps/*/results.json'))


def test_committed_records_keep_their_run_keys():
    from force_edu.sweep import load_results, run_key
    paths = _committed_results()
    assert paths, "no committed results.json found"
    n = 0
    for p in paths:
        for rec in load_results(p):
            if (rec.get('ablation') or 'none') == 'none':   # a method's own run: the key it had before ablations existed
                assert run_key(rec) == legacy_run_key(rec), (p, rec['method'], rec['sparsity'], rec['seed'])
                assert run_key({**rec, 'ablation': 'none'}) == run_key(rec)
                if rec['method'] != 'dense': assert run_key({**rec, 'ablation': 'shuffle'}) != run_key(rec)
            else:   # an ablated run (the sanity-checks study) never takes the key of the method's own run
                assert run_key(rec) != run_key({**rec, 'ablation': 'none'}), (p, rec['method'], rec['ablation'], rec['seed'])
            n += 1
    assert n > 100


def _callback(method, ablation, **kw):
    from types import SimpleNamespace
    import torch.nn.functional as F
    from force_edu.callback import PruneAtInitCallback
    from force_edu.sweep import kaiming_init
    cb = PruneAtInitCallback(0.9, method, seed=0, ablation=ablation, init=kaiming_init, progress=False, verbose=False, **kw)
    cb.learn = SimpleNamespace(loss_func=F.cross_entropy)   # what a Learner would hold; the callback reads it
    return cb

def test_callback_ablation_shuffles_or_redraws_in_place():
    "The run's ablation, applied by the callback after the method: the shuffled mask, or the same mask on new weights."
    from force_edu.callback import ABLATION_SEED_OFFSET
    from force_edu.sweep import kaiming_init
    model, bs = kaiming_init(cnn()), digit_batches(1)
    chosen = prune_at_init(model, bs, 0.9, 'magnitude')
    before = {n: t.clone() for n, t in model.state_dict().items()}
    masks = _callback(  'magnitude', 'shuffle')._prune(model, bs)
    assert masks == ablate(chosen, model, 'shuffle', ABLATION_SEED_OFFSET)[0]   # seed 0 + the offset
    assert masks.layer_kept() == chosen.layer_kept() and masks != chosen
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())   # shuffling leaves the model as it was
    params = [id(p) for p in model.parameters()]
    new = ablate(chosen, model, 'reinit', ABLATION_SEED_OFFSET, init=kaiming_init)[1]
    assert _callback('magnitude', 'reinit')._prune(model, bs) == chosen
    assert [id(p) for p in model.parameters()] == params                              # the same parameters, new values
    for n, t in model.state_dict().items():
        assert torch.equal(t, new.state_dict()[n])
        assert torch.equal(before[n], t) != (n in ('0.weight', '3.weight', '7.weight')), n

def test_callback_ablation_inverts():
    import torch.nn.functional as F
    model, bs = cnn(), digit_batches(2)
    for method in ('snip', 'iter_snip'):
        own = _callback(method, 'none', steps=3, loss_func=F.cross_entropy)._prune(model, bs)
        inv = _callback(method, 'invert', steps=3, loss_func=F.cross_entropy)._prune(model, bs)
        assert inv == prune_at_init(model, bs * 2, 0.9, method, steps=3, invert=True, loss_func=F.cross_entropy) and inv != own


def test_sweep_ablation_bad_input():
    from force_edu.sweep import Sweep, train_run
    base = dict(data='digits', arch='vgg', sparsities=[0.9], epochs=1, n_train=256, bs=64, width=4, steps=3)
    one_line_value_error(lambda: Sweep(**base, methods=['snip'], ablation='swap', out='/nonexistent/x'), 'ablation must be one or several of')
    one_line_value_error(lambda: Sweep(**base, methods=['random'], ablation=['shuffle'], out='/nonexistent/x'), 'has none')
    cfg = dict(steps=None, mode='exp', batches_per_step=1, bn_mode='train', loss=None)
    one_line_value_error(lambda: train_run(cfg, 'random', 0.9, 0, None, 1, True, ablation='shuffle'), "needs a method that ranks scores")
    one_line_value_error(lambda: train_run(cfg, 'snip', 0.9, 0, None, 1, True, ablation='invertt'), 'ablation must be one of')
    one_line_value_error(lambda: train_run(cfg, 'dense', 0, 0, None, 1, True, ablation='shuffle'), "needs a pruning method")
