"""The fastai callback beyond what its notebook shows: bad input, the model after a failure, one mask for a whole session,
checkpoints and exports. Small models and data: the whole file runs in well under a minute on one CPU thread."""
import math, warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.data.core import DataLoaders
from fastai.learner import Learner, load_learner
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.training import ShortEpochCallback
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.schedule  # noqa: F401  (Learner.lr_find, fit_one_cycle, fine_tune)

from force_edu.masks import Masks, prunable_layers, is_pruned
from force_edu.methods import prune_at_init, repeat_batches, model_fingerprint, same_fingerprint
from force_edu.callback import PruneAtInitCallback, ForceCallback, KeepPrunedCallback, check_prune_args, masks_path

torch.set_num_threads(1)


def _net(seed=0, n_out=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out))


def _dls(n=96, bs=16, shuffle=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    ds = [(xi, yi) for xi, yi in zip(x, y)]
    kw = {} if shuffle else dict(shuffle=False)
    return DataLoaders.from_dsets(ds[:64], ds[64:], bs=bs, device='cpu', num_workers=0, **kw)


def _learner(cb=None, seed=0, tmp_path='.', **kw):
    cbs = [c for c in (cb,) if c is not None]
    kw.setdefault('loss_func', F.cross_entropy)
    learn = Learner(_dls(), _net(seed), path=tmp_path, cbs=cbs, **kw)
    if hasattr(learn, 'progress'): learn.remove_cb(learn.progress)
    learn.logger = lambda *a, **k: None
    return learn


# ---- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [1.0, -0.1, 1.5, float('nan'), '0.9', True, None])
@pytest.mark.parametrize('cls', [ForceCallback, PruneAtInitCallback])
def test_bad_sparsity_fails_at_construction(cls, bad):
    with pytest.raises(ValueError, match=r'sparsity must be a number in \[0, 1\)'): cls(bad)


@pytest.mark.parametrize('kw, msg', [(dict(method='forse'), 'known methods'), (dict(steps=0), 'steps must be'),
                                     (dict(steps=2.5), 'steps must be'), (dict(batches_per_step=0), 'batches_per_step must be'),
                                     (dict(mode='cosine'), 'mode must be'), (dict(bn_mode='frozen'), 'bn_mode must be')])
def test_bad_arguments_fail_at_construction(kw, msg):
    with pytest.raises(ValueError, match=msg): PruneAtInitCallback(0.9, **kw)
    with pytest.raises(ValueError, match=msg): check_prune_args(0.9, **kw)


def _fails_and_leaves_model(learn, exc, match):
    before = model_fingerprint(learn.model)
    with pytest.raises(exc, match=match): learn.fit(1)
    assert same_fingerprint(before, model_fingerprint(learn.model)), "the model changed although before_fit failed"
    assert learn.pruning_masks is None
    assert not any(is_pruned(m) for m in learn.model.modules())


def test_bad_sparsity_set_after_construction_fails_at_before_fit(tmp_path):
    cb = ForceCallback(0.9, steps=2, progress=False)
    cb.sparsity = 1.0
    _fails_and_leaves_model(_learner(cb, tmp_path=tmp_path), ValueError, r'sparsity must be')


def test_no_prunable_layer(tmp_path):
    learn = Learner(_dls(), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64)),
                    loss_func=lambda out, y: out.mean(), cbs=ForceCallback(0.9), path=tmp_path)
    _fails_and_leaves_model(learn, ValueError, 'has no prunable layer')


def test_empty_training_dataloader(tmp_path):
    dls = _dls(bs=128)                                   # 64 training items, drop_last: no batch
    assert len(dls.train) == 0
    learn = Learner(dls, _net(), loss_func=F.cross_entropy, cbs=ForceCallback(0.9), path=tmp_path)
    _fails_and_leaves_model(learn, ValueError, r'learn.dls.train yields no batch \(items=64, bs=128, drop_last=True\)')


def test_nan_data_fails_before_any_change(tmp_path):
    learn = _learner(ForceCallback(0.9, steps=2, progress=False), tmp_path=tmp_path,
                     loss_func=lambda out, y: F.cross_entropy(out, y) * float('nan'))
    _fails_and_leaves_model(learn, ValueError, 'the loss is nan')


@pytest.mark.parametrize('exc', [CancelFitException, KeyboardInterrupt, RuntimeError])
def test_interrupted_pruning_leaves_model_dense_and_usable(tmp_path, exc):
    def stop(t, k, c):
        if t == 1: raise exc('stop')
    cb = ForceCallback(0.9, steps=4, progress=False, verbose=False, on_step=stop)
    learn = _learner(cb, tmp_path=tmp_path)
    before = model_fingerprint(learn.model)
    if exc is CancelFitException: learn.fit(1)            # fastai ends the fit quietly
    else:
        with pytest.raises(exc): learn.fit(1)
    assert same_fingerprint(before, model_fingerprint(learn.model))
    assert learn.pruning_masks is None and cb.masks is None
    cb.on_step = None
    learn.fit(1)                                          # usable: the next fit prunes from scratch
    assert math.isclose(learn.pruning_masks.sparsity, 0.9, abs_tol=2e-3)


# ---- what the callback computes ----------------------------------------------------------------------------------

def test_mask_is_prune_at_init_on_the_learners_batches_and_loss(tmp_path):
    calls = []
    def loss(out, y): calls.append(len(y)); return F.cross_entropy(out, y)
    dls = _dls(shuffle=False)
    learn = Learner(dls, _net(), loss_func=loss, path=tmp_path,
                    cbs=ForceCallback(0.95, steps=6, batches_per_step=1, progress=False, verbose=False))
    expected = prune_at_init(_net(), repeat_batches(dls.train), 0.95, 'force', steps=6, loss_func=F.cross_entropy)   # 4 batches: gone over again
    assert expected != prune_at_init(_net(), repeat_batches(dls.train), 0.95, 'force', steps=6)   # FORCE's own default is the raw-logit NLL
    assert len(dls.train) == 4
    learn.fit(1, cbs=ShortEpochCallback(0))
    assert learn.pruning_masks == expected
    assert calls[:6] == [16] * 6                          # the learner's loss, on the 6 saliency batches


def test_one_summary_line_and_one_mask_for_a_session(tmp_path, capsys):
    steps = []
    cb = ForceCallback(0.95, steps=5, progress=False, on_step=lambda t, k, c: steps.append(t))
    learn = _learner(cb, tmp_path=tmp_path)
    learn.lr_find(num_it=6, show_plot=False)
    masks = learn.pruning_masks
    learn.fit(1)
    learn.fit_one_cycle(1)
    learn.fine_tune(1, freeze_epochs=1)
    assert steps == [0, 1, 2, 3, 4]
    assert learn.pruning_masks is masks and cb.masks is masks
    out = capsys.readouterr().out
    assert out.count('ForceCallback: force (5 steps, exp) pruned to sparsity') == 1, out
    for n, l in prunable_layers(learn.model).items(): assert not l.weight[~masks[n]].any()


def test_parameter_order_is_kept(tmp_path):
    learn = _learner(ForceCallback(0.9, steps=2, progress=False, verbose=False), tmp_path=tmp_path)
    dense = [n for n, _ in learn.model.named_parameters()]
    ids = [id(p) for p in learn.model.parameters()]
    learn.fit(1)
    assert [n for n, _ in learn.model.named_parameters()] == dense
    assert [id(p) for p in learn.model.parameters()] == ids
    learn.remove_pruning()
    assert [n for n, _ in learn.model.named_parameters()] == dense


# ---- checkpoints and exports -------------------------------------------------------------------------------------

def test_export_round_trip_and_training_after_export(tmp_path):
    from force_edu.data import digits_dls               # `export` needs fastai datasets (it empties them)
    learn = Learner(digits_dls(size=8, channels=1), _net(n_out=10), path=tmp_path,
                    cbs=ForceCallback(0.9, steps=3, progress=False, verbose=False))
    learn.remove_cb(learn.progress); learn.logger = lambda *a, **k: None
    learn.fit(1, 1e-2, cbs=ShortEpochCallback(0.2))
    masks = learn.pruning_masks
    learn.export('pruned.pkl')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        back = load_learner(tmp_path/'pruned.pkl')
    assert back.pruning_masks == masks and Masks.from_model(back.model) == masks
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(back.model.eval()(x), learn.model.eval()(x))
    assert back.predict(torch.rand(8, 8) * 255)[0] in [str(i) for i in range(10)]
    for n, l in prunable_layers(back.model).items(): assert not l.weight[~masks[n]].any()
    learn.fit(1, 1e-2, cbs=ShortEpochCallback(0.2))      # export rebuilt the optimizer from the pruned model: state fits
    for n, l in prunable_layers(learn.model).items(): assert not l.weight[~masks[n]].any()


def test_save_load_pruned_fresh_and_dense(tmp_path):
    learn = _learner(ForceCallback(0.9, steps=3, progress=False, verbose=False), tmp_path=tmp_path)
    learn.fit(1, 1e-2)
    learn.save('p')
    x = torch.randn(5, 1, 8, 8)
    y = learn.model.eval()(x)
    other = _learner(ForceCallback(0.5, steps=2, progress=False, verbose=False), seed=1, tmp_path=tmp_path)
    other.fit(1)                                          # pruned too, with another mask: the checkpoint's replaces it
    other.load('p')
    assert other.pruning_masks == learn.pruning_masks and other.force.masks == learn.pruning_masks
    torch.testing.assert_close(other.model.eval()(x), y)
    fresh_cb = ForceCallback(0.5, steps=2, progress=False)
    fresh = _learner(fresh_cb, seed=2, tmp_path=tmp_path)  # unpruned, with a callback that has computed nothing
    fresh.load('p')
    assert fresh.pruning_masks == learn.pruning_masks and fresh_cb.masks == learn.pruning_masks
    torch.testing.assert_close(fresh.model.eval()(x), y)
    fresh.fit(1)                                          # the callback adopts the loaded mask; nothing is recomputed
    assert fresh_cb.report is None and fresh.pruning_masks == learn.pruning_masks
    assert masks_path(tmp_path/'models'/'p.pth').exists()
    assert list(torch.load(tmp_path/'models'/'p.pth', weights_only=False)['model']) == list(_net().state_dict())
    dense = _learner(tmp_path=tmp_path)
    dense.save('d')
    assert not masks_path(tmp_path/'models'/'d.pth').exists()
    learn.load('d')                                       # dense weights into a pruned learner: pruned by its mask
    assert learn.pruning_masks == Masks.from_model(learn.model) == Masks.from_zeros(learn.model)
    for n, l in prunable_layers(learn.model).items():
        torch.testing.assert_close(l.weight, prunable_layers(dense.model)[n].weight * learn.pruning_masks[n])
    wrong = Learner(_dls(), nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), loss_func=F.cross_entropy, path=tmp_path)
    with pytest.raises(ValueError, match='do not fit'): wrong.load('p')   # a checkpoint of another architecture
    learn.remove_pruning()
    learn.load('d')                                       # after remove_pruning dense weights load as usual


# ---- pruned weights stay exactly 0 through every kind of training -----------------------------------------------

class StayZero(Callback):
    "After every step (and after the callbacks that keep the mask), every pruned weight is an exact 0 in a plain Parameter."
    order = 100
    def __init__(self): self.n = 0
    def after_step(self):
        from fastai.torch_core import get_model
        masks = Masks.from_model(get_model(self.learn.model))
        for name, l in prunable_layers(get_model(self.learn.model)).items():
            assert type(l.weight) is nn.Parameter and not l.weight[~masks[name].to(l.weight.device)].any(), name
        self.n += 1


def _optimizers():
    from functools import partial
    from fastai.optimizer import SGD, Adam, OptimWrapper
    return {'sgd_mom_wd': partial(SGD, mom=0.9, wd=1e-2), 'adam': Adam, 'adam_coupled_wd': partial(Adam, decouple_wd=False, wd=1e-2),
            'torch_adamw': partial(OptimWrapper, opt=torch.optim.AdamW, weight_decay=0.1),
            'torch_sgd_nesterov': partial(OptimWrapper, opt=torch.optim.SGD, momentum=0.9, nesterov=True, weight_decay=1e-2)}


@pytest.mark.parametrize('opt', list(_optimizers()))
def test_stay_zero_lr_find_fit_one_cycle_fine_tune(opt, tmp_path):
    learn = _learner(ForceCallback(0.9, steps=3, progress=False, verbose=False), tmp_path=tmp_path, opt_func=_optimizers()[opt])
    learn.lr_find(num_it=6, show_plot=False)
    learn.add_cb(StayZero())
    learn.fit_one_cycle(1, 1e-2)
    learn.fine_tune(1, 1e-2, freeze_epochs=1)
    assert learn.stay_zero.n >= 3 * 4
    masks = learn.pruning_masks
    kept = torch.cat([l.weight[masks[n]].reshape(-1) for n, l in prunable_layers(learn.model).items()])
    assert kept.ne(0).all()


def test_stay_zero_gradient_accumulation(tmp_path):
    from fastai.callback.training import GradientAccumulation
    from fastai.optimizer import SGD
    from functools import partial
    learn = _learner(ForceCallback(0.9, steps=3, progress=False, verbose=False), tmp_path=tmp_path, opt_func=partial(SGD, mom=0.9, wd=1e-2))
    sz = StayZero()
    learn.fit(2, 1e-2, cbs=[GradientAccumulation(n_acc=32), sz])
    assert sz.n == 4                         # 8 batches of 16, one step every 32 samples


def test_stay_zero_after_loading_a_dense_optimizer_state(tmp_path):
    "The momentum of a dense run, loaded with `with_opt=True`, would move pruned weights: the after-step re-zeroing holds."
    from fastai.optimizer import SGD
    from functools import partial
    sgd = partial(SGD, mom=0.9)
    dense = _learner(tmp_path=tmp_path, opt_func=sgd)
    dense.fit(1, 1e-2)
    dense.save('dense_with_opt', with_opt=True)
    learn = _learner(ForceCallback(0.9, steps=3, progress=False, verbose=False), tmp_path=tmp_path, opt_func=sgd)
    learn.fit(1, 1e-2)
    learn.load('dense_with_opt', with_opt=True)
    assert any(learn.opt.state[p].get('grad_avg') is not None for p in learn.model.parameters())
    sz = StayZero()
    learn.fit(1, 1e-2, cbs=sz)
    assert sz.n == 4


def test_keep_pruned_callback_for_a_hand_pruned_model(tmp_path):
    model = _net()
    masks = prune_at_init(model, None, 0.8, 'random', seed=0, input_shape=(1, 8, 8))
    masks.apply(model)
    learn = Learner(_dls(), model, loss_func=F.cross_entropy, path=tmp_path, cbs=[KeepPrunedCallback(), StayZero()])
    learn.fit(1, 1e-2)
    assert learn.stay_zero.n == 4 and Masks.from_zeros(model) == masks
    learn.save('hand')
    assert Masks.load(masks_path(tmp_path/'models'/'hand.pth')) == masks
    fresh = _learner(tmp_path=tmp_path, seed=3)           # no callback at all: `load` adds one that keeps the mask
    fresh.load('hand')
    assert fresh.pruning_masks == masks and any(type(cb) is KeepPrunedCallback for cb in fresh.cbs)
    sz = StayZero()
    fresh.fit(1, 1e-2, cbs=sz)
    assert sz.n == 4 and Masks.from_zeros(fresh.model) == masks


@pytest.mark.skipif(not torch.cuda.is_available(), reason='to_fp16 (CUDA autocast and GradScaler) needs a GPU')
def test_stay_zero_to_fp16_on_gpu(tmp_path):
    from fastai.callback.fp16 import MixedPrecision  # noqa: F401 (Learner.to_fp16)
    dls = _dls()
    dls.to('cuda')
    learn = Learner(dls, _net(), loss_func=F.cross_entropy, path=tmp_path,
                    cbs=[ForceCallback(0.9, steps=3, progress=False, verbose=False), StayZero()]).to_fp16()
    learn.remove_cb(learn.progress)
    learn.fit_one_cycle(2, 1e-2)
    assert learn.stay_zero.n > 0 and next(learn.model.parameters()).is_cuda
    assert learn.pruning_masks == Masks.from_zeros(learn.model)


def test_default_saliency_loss_follows_the_method(tmp_path):
    "With `loss_func=None` and a cross-entropy learner, FORCE and Iterative SNIP score with the raw-logit NLL, SNIP with the learner's cross-entropy."
    from force_edu.sensitivity import raw_logit_nll
    dls = _dls(shuffle=False)
    for method, want_loss in (('force', raw_logit_nll), ('iter_snip', raw_logit_nll), ('snip', F.cross_entropy)):
        learn = Learner(dls, _net(), loss_func=CrossEntropyLossFlat(), path=tmp_path,
                        cbs=PruneAtInitCallback(0.95, method, steps=None if method == 'snip' else 6, progress=False, verbose=False))
        learn.fit(1, cbs=ShortEpochCallback(0))
        steps = 1 if method == 'snip' else 6
        assert learn.pruning_masks == prune_at_init(_net(), repeat_batches(dls.train), 0.95, method, steps=steps, loss_func=want_loss), method


def test_temperature_reaches_prune_at_init(tmp_path):
    "`temperature=` of the callback is `prune_at_init`'s: GRASP's default (200) unless told otherwise, and applied once."
    dls = _dls(shuffle=False)
    masks = {}
    for t in (None, 1, 200):
        learn = Learner(dls, _net(), loss_func=CrossEntropyLossFlat(), path=tmp_path,
                        cbs=PruneAtInitCallback(0.9, 'grasp', temperature=t, progress=False, verbose=False))
        learn.fit(1, cbs=ShortEpochCallback(0))
        masks[t] = learn.pruning_masks
        assert masks[t] == prune_at_init(_net(), repeat_batches(dls.train), 0.9, 'grasp', temperature=t, loss_func=F.cross_entropy), t
    assert masks[None] == masks[200] and masks[1] != masks[200]
    with pytest.raises(ValueError, match='temperature'): PruneAtInitCallback(0.9, 'grasp', temperature=0)


# ---- pairing: which training order each method trains on ----------------------------------------------------------

class _FirstBatches(Callback):
    "Records the targets of the first two training batches, then stops the fit."
    order = 100
    def before_fit(self): self.ys = []
    def before_batch(self):
        if not self.training: return
        self.ys.append(self.y.clone())
        if len(self.ys) == 2: raise CancelFitException()


def _training_order(method, skip_pass=False):
    "The first training batches of a fit after pruning by `method` ('dense': no pruning), from seed 0."
    from fastai.torch_core import set_seed
    set_seed(0)
    cb = None if method == 'dense' else PruneAtInitCallback(0.5, method, steps=2, verbose=False)
    learn = _learner(cb)
    if skip_pass: list(learn.dls.train)   # one pass of the training loader, read and discarded
    rec = _FirstBatches(); learn.add_cb(rec)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1)
    return torch.cat(rec.ys)


def test_which_training_order_each_method_trains_on():
    "What the study page states: data-driven methods whose pruning reads at most one pass of the training loader all train "
    "on its second pass; data-free methods train on its first, as the dense run does. So pairs within each group share "
    "their batch order, and a pair across the groups does not."
    dense = _training_order('dense')
    driven = {m: _training_order(m) for m in ('snip', 'grasp', 'iter_snip', 'force')}   # 2 steps <= 4 batches a pass
    free = {m: _training_order(m) for m in ('random', 'erk', 'smart_ratio', 'synflow')}
    for m, o in free.items(): assert torch.equal(o, dense), m
    for m, o in driven.items(): assert torch.equal(o, driven['snip']), m
    assert not torch.equal(driven['snip'], dense)                    # the two groups differ ...
    assert torch.equal(driven['snip'], _training_order('dense', skip_pass=True))   # ... by exactly one pass of the loader
