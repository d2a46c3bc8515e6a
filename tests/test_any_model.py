"Any model: shared and tied weights, the `layer_types` selector, gradient masks in plain PyTorch, clear errors, collapse warnings, the conformance run."
import copy, io, json, os, pickle, pydoc, subprocess, sys, warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from force_edu.masks import (PRUNABLE_TYPES, Masks, keep_pruned, n_kept, prunable_weights, weight_of, _mask_grads,
                             _GRAD_HOOKS)
from force_edu.methods import METHODS, prune_at_init, model_fingerprint, same_fingerprint
from force_edu.diagnose import PruningWarning, explain_missing_derivatives, math_attention, output_depends_on_input
from force_edu.callback import ForceCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from conformance_models import project_cases  # noqa: E402

CASES = {c.name: c for c in project_cases()}


def quiet_prune(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', PruningWarning)
        return prune_at_init(*args, **kwargs)


def n_distinct_nonzero(model, layer_types=PRUNABLE_TYPES):
    return sum(int(weight_of(h).count_nonzero()) for h in prunable_weights(model, layer_types).values())


@pytest.mark.parametrize('name', ['tied_embedding_lm_classifier', 'shared_parameter_mlp'])
@pytest.mark.parametrize('method', list(METHODS))
def test_shared_weights_pruned_once(name, method):
    case = CASES[name]
    model = case.build()
    steps = 3 if METHODS[method].iterative or METHODS[method].default_steps > 1 else None
    c = quiet_prune(model, case.batches(3), 0.9, method, steps=steps)
    m = sum(weight_of(h).numel() for h in prunable_weights(model).values())
    assert c.total == m and c.kept == n_kept(m, 0.9)
    c.apply(model)
    assert n_distinct_nonzero(model) <= c.kept   # a kept weight may be 0 at initialisation, a pruned one never is not
    assert all(int(weight_of(h)[~c[k]].count_nonzero()) == 0 for k, h in prunable_weights(model).items())
    assert Masks.from_model(model) == c
    c.remove(model)
    assert not any(b.endswith('_keep') for b, _ in model.named_buffers())


def test_tied_weight_has_one_name_and_every_holder():
    model = CASES['tied_embedding_lm_classifier'].build()
    ws = prunable_weights(model)
    assert list(ws) == ['embedding', 'hidden']
    assert [(n, a) for n, _, a in ws['embedding']] == [('embedding', 'weight'), ('decoder', 'weight')]


@pytest.mark.parametrize('layer_types, expected', [
    (PRUNABLE_TYPES, ['head']),
    (PRUNABLE_TYPES + ('recurrent',), ['rnn.weight_ih_l0', 'rnn.weight_hh_l0', 'rnn.weight_ih_l1', 'rnn.weight_hh_l1', 'head']),
    ((nn.LSTM,), ['rnn.weight_ih_l0', 'rnn.weight_hh_l0', 'rnn.weight_ih_l1', 'rnn.weight_hh_l1']),
    (('embedding',), ['embedding']),
])
def test_selector(layer_types, expected):
    assert list(prunable_weights(CASES['lstm_classifier'].build(), layer_types)) == expected


def test_attention_is_opt_in_with_its_out_proj():
    model = CASES['transformer_classifier'].build()
    assert not any('self_attn' in k for k in prunable_weights(model))
    keys = list(prunable_weights(model, PRUNABLE_TYPES + ('attention',)))
    assert 'encoder.layers.1.self_attn.in_proj_weight' in keys and 'encoder.layers.1.self_attn.out_proj' in keys


@pytest.mark.parametrize('bad', ['rnn', 3, (nn.Linear, 'conv')])
def test_bad_selector_is_one_line(bad):
    with pytest.raises(ValueError, match="layer_types takes module classes") as e:
        prunable_weights(nn.Linear(2, 2), bad)
    assert '\n' not in str(e.value)


def test_no_prunable_error_is_not_circular():
    for model, group in ((nn.LSTM(3, 4), 'recurrent'), (nn.Embedding(5, 3), 'embedding'),
                         (nn.MultiheadAttention(4, 2, bias=False), 'attention')):
        with pytest.raises(ValueError) as e: prunable_weights(model)
        msg = str(e.value)
        assert f"PRUNABLE_TYPES + ('{group}',)" in msg and '\n' not in msg
        assert prunable_weights(model, PRUNABLE_TYPES + (group,))   # the suggested selector works


@pytest.mark.parametrize('make', [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.Adagrad(p, lr=1e-2),
])
@pytest.mark.parametrize('copy_how', ['none', 'deepcopy', 'pickle', 'torch.save'])
def test_apply_alone_keeps_pruned_at_zero(make, copy_how):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    c = quiet_prune(model, [(x, y)], 0.8, 'snip')
    c.apply(model)
    if copy_how == 'deepcopy': model = copy.deepcopy(model)
    elif copy_how == 'pickle': model = pickle.loads(pickle.dumps(model))
    elif copy_how == 'torch.save':
        buf = io.BytesIO(); torch.save(model, buf); buf.seek(0); model = torch.load(buf, weights_only=False)
    opt = make(model.parameters())
    for _ in range(4):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    assert Masks.from_zeros(model) == c   # pruned exactly 0, kept ones trained (never exactly 0)


def test_compiled_pruned_model_keeps_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    c = quiet_prune(model, [(x, y)], 0.8, 'snip')
    c.apply(model)
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        opt.zero_grad(); F.cross_entropy(compiled(x), y).backward(); opt.step()
    assert Masks.from_zeros(model) == c


def test_remove_takes_the_hooks_away():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    c = quiet_prune(model, None, 0.5, 'magnitude')
    c.apply(model)
    assert all(p in _GRAD_HOOKS for p in (model[0].weight, model[1].weight))
    c.remove(model)
    assert not any(p in _GRAD_HOOKS for p in model.parameters())
    assert not any(_mask_grads in m._forward_pre_hooks.values() for m in model.modules())


class _NoDoubleBackward(torch.autograd.Function):
    "x ** 2 whose backward is not differentiable again (`once_differentiable`)."
    @staticmethod
    def forward(ctx, x): ctx.save_for_backward(x); return x * x
    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g): x, = ctx.saved_tensors; return 2 * x * g


def test_missing_derivative_becomes_our_error():
    with pytest.raises(ValueError, match="grasp needs second derivatives .* `aten::foo_backward`.*first-order method: snip") as e:
        with explain_missing_derivatives('grasp', True, ['snip', 'force']):
            raise RuntimeError("derivative for aten::foo_backward is not implemented")
    assert '\n' not in str(e.value)
    with pytest.raises(RuntimeError, match='something else'):   # other errors pass through unchanged
        with explain_missing_derivatives('grasp', True, ['snip']): raise RuntimeError('something else')


def test_mobilenet_v3_grasp_error_leaves_model():
    torchvision = pytest.importorskip('torchvision')
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    before = model_fingerprint(model)
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,)))]
    with pytest.raises(ValueError, match=r"`aten::hardsigmoid_backward`.*first-order method") as e:
        prune_at_init(model, batches, 0.9, 'grasp')
    assert '\n' not in str(e.value)
    assert same_fingerprint(before, model_fingerprint(model))


def test_math_attention_restores_the_callers_choice():
    from torch.nn.attention import sdpa_kernel, SDPBackend
    flags = lambda: (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                     torch.backends.cuda.math_sdp_enabled())
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        before = flags()
        with math_attention(): assert flags() == (False, False, True)
        assert flags() == before


@pytest.mark.parametrize('method', ['grasp', 'grasp_mb'])
def test_second_order_on_attention(method):
    case = CASES['transformer_classifier']
    c = quiet_prune(case.build(), case.batches(2), 0.9, method, steps=2 if method == 'grasp_mb' else None,
                    layer_types=PRUNABLE_TYPES + ('attention',))
    assert c.kept == n_kept(c.total, 0.9)


def test_collapse_is_warned_once_and_carried():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad(): chain[2].weight.mul_(1e-6)   # magnitude empties the middle layer first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        c = prune_at_init(chain, [(torch.randn(4, 6), torch.randint(0, 3, (4,)))], 0.9, 'magnitude')
    ours = [w for w in caught if issubclass(w.category, PruningWarning)]
    assert len(ours) == 1 and '\n' not in str(ours[0].message)
    assert c.dead_layers == ['2'] and c.connected is False and 'no longer depends on the input' in str(ours[0].message)


def test_healthy_mask_is_not_warned():
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings():
        warnings.simplefilter('error', PruningWarning)
        c = prune_at_init(chain, [(torch.randn(4, 6), torch.randint(0, 3, (4,)))], 0.5, 'snip')
    assert c.connected is True and c.zero_score_share == 0 and not c.dead_layers


def test_output_depends_on_input_ignores_other_examples():
    "BatchNorm on running statistics: one example's output cannot depend on another's, so a cut-off net is seen as such."
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    empty_first = Masks({'0': torch.zeros(4, 4, dtype=torch.bool), '3': torch.ones(2, 4, dtype=torch.bool)})
    assert output_depends_on_input(net, empty_first, (torch.randn(8, 4),)) is False


def test_help_lists_parameters_and_defaults():
    for obj, must in ((prune_at_init, ['steps: int | None', "the method's own", '300', 'layer_types']),
                      (Masks.apply, ['model: nn.Module']), (keep_pruned, ['optimizer']),
                      (ForceCallback, ['sparsity: float', "(default: 'exp')", 'temperature'])):
        text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
        assert all(m in text for m in must), (obj, [m for m in must if m not in text])


def _check_records(records):
    "Every case keeps exactly k distinct weights or raised our own one-line error; every degenerate mask was warned."
    bad = [r for r in records if not ((r['status'] == 'ok' and r['exact_k']) or (r['status'] == 'error' and r['ours']))]
    assert not bad, bad[:3]
    for r in records:
        if r['status'] != 'ok': continue
        degenerate = r['empty_layers'] > 0 or r['connected'] is False or (r['zero_score_share'] or 0) > 0.5
        assert r['warned'] == degenerate, r


def test_conformance_quick(tmp_path):
    out = tmp_path / 'quick.json'
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'conformance.py'), '--quick', '--steps', '2',
                        '--out', str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    records = json.loads(out.read_text())['records']
    assert {x['model'] for x in records} == {'mobilenet_v3_small', 'squeezenet1_1', 'shufflenet_v2_x0_5',
                                             'transformer_classifier', 'lstm_classifier', 'gru_classifier',
                                             'tied_embedding_lm_classifier', 'shared_parameter_mlp'}
    _check_records(records)


def test_committed_conformance_table():
    path = ROOT / 'benchmarks' / 'results' / 'conformance.json'
    data = json.loads(path.read_text())
    _check_records(data['records'])
    import torchvision
    names = torchvision.models.list_models(module=torchvision.models)
    small = {n for n in names if n not in {s for s, _ in data['meta']['skipped']}}
    assert small <= {r['model'] for r in data['records']}   # every builder up to the size limit was run
    assert all(p > data['meta']['max_params'] for _, p in data['meta']['skipped'])


@pytest.mark.parametrize('method', ['magnitude', 'snip'])
def test_callback_warns_and_training_order_is_untouched(method):
    "The callbacks warn like `prune_at_init`; a data-free method checks its mask on a validation batch without moving any random state."
    import random
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from force_edu.callback import PruneAtInitCallback
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    dls = DataLoaders.from_dsets(list(zip(x, y)), list(zip(x, y)), bs=16)
    chain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    if method == 'magnitude':
        with torch.no_grad(): chain[2].weight.mul_(1e-6)   # magnitude empties the middle layer
    cb = PruneAtInitCallback(0.5 if method == 'snip' else 0.9, method, verbose=False)
    learn = Learner(dls, chain, loss_func=nn.CrossEntropyLoss(), cbs=cb)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    if method == 'magnitude':
        with pytest.warns(PruningWarning, match='emptied 1 of 3 prunable layers.*no longer depends on the input'):
            masks = cb._prune(learn.model, dls.train)
        assert masks.connected is False
        assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('error', PruningWarning)
            assert cb._prune(learn.model, dls.train).connected is True


def test_nan_saliency_names_its_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    nan_grad = lambda out, y: torch.sqrt(out[:, 0] - out[:, 0]).sum()   # finite (0), but its gradient is 0 * inf = NaN
    with pytest.raises(ValueError, match=r"snip: the saliency scores of 2 layers \(0, 2\) contain NaN; .*larger") as e:
        prune_at_init(model, [(torch.randn(4, 4), torch.randint(0, 3, (4,)))], 0.5, 'snip', loss_func=nan_grad)
    assert '\n' not in str(e.value)


def test_pruning_warning_points_at_the_callers_line():
    "The warning names the user's line (their `prune_at_init` or `fit` call), not a line inside force_edu, fastai or torch."
    import inspect, warnings
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from force_edu.callback import PruneAtInitCallback
    from force_edu.diagnose import PruningWarning
    torch.manual_seed(0)
    net = lambda: nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always', PruningWarning)
        line = inspect.currentframe().f_lineno + 1
        prune_at_init(net(), [(x[:16], y[:16])], 0.97, 'snip')
    assert [(r.filename, r.lineno) for r in w if r.category is PruningWarning] == [(__file__, line)]
    ds = list(zip(x, y))
    learn = Learner(DataLoaders.from_dsets(ds[:24], ds[24:], bs=8, device='cpu'), net(), loss_func=F.cross_entropy,
                    cbs=PruneAtInitCallback(0.97, 'snip', verbose=False))
    learn.logger = lambda *a, **k: None
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always', PruningWarning)
        line = inspect.currentframe().f_lineno + 1
        learn.fit(1)
    assert [(r.filename, r.lineno) for r in w if r.category is PruningWarning] == [(__file__, line)]
