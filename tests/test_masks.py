"""`Masks` round trips: save/load, flat, apply/from_model/remove, training with pruned weights (`keep_pruned`), state dicts,
and a pruned model as a plain model: deepcopy, pickle, AveragedModel, torch.compile, weights_only checkpoints."""
import copy, functools, math, pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

from force_edu.masks import Masks, is_pruned, prunable_layers, keep_pruned, zero_pruned_grads, zero_pruned_weights
from force_edu.methods import prune_at_init, model_fingerprint, same_fingerprint

@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "Tiny models: one intra-op thread is much faster than two on a shared machine (OpenMP spin-waits)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@functools.lru_cache(maxsize=None)
def _digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm], y[perm]

def digit_batches(n, bs=32):
    X, y = _digits()
    return [(X[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs]) for i in range(n)]

def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))

def force_masks(model, sparsity=0.9, seed_batches=0):
    return prune_at_init(model, digit_batches(4 + seed_batches)[seed_batches:], sparsity, 'force', steps=4)

def random_masks(model, sparsity, seed):
    return prune_at_init(model, None, sparsity, 'random', seed=seed, input_shape=(1, 8, 8))

@pytest.fixture
def model(): return cnn()

@pytest.fixture
def masks(model): return force_masks(model)

def weights(model): return {n: mod.weight for n, mod in prunable_layers(model).items()}

# ---------------------------------------------------------------- the object

def test_masks_basic(model, masks):
    assert list(masks) == ['0', '3', '7'] and len(masks) == 3
    assert masks.shapes == {n: w.shape for n, w in weights(model).items()}
    assert masks.total == sum(w.numel() for w in weights(model).values())
    assert masks.kept == round(0.1 * masks.total)
    assert abs(masks.sparsity - 0.9) < 1e-3 and masks.density + masks.sparsity == pytest.approx(1)
    assert sum(masks.layer_kept().values()) == masks.kept
    assert masks.overlap(masks) == 1.0
    assert masks == copy.deepcopy(masks) and masks != random_masks(model, 0.9, 0) and masks != 'x'
    assert masks.summary() in repr(masks)
    with pytest.raises(TypeError): hash(masks)

def test_masks_equality_needs_same_order_and_shapes():
    a = Masks({'x': torch.ones(2, 2, dtype=torch.bool), 'y': torch.zeros(3, dtype=torch.bool)})
    assert a != Masks({'y': torch.zeros(3, dtype=torch.bool), 'x': torch.ones(2, 2, dtype=torch.bool)})
    assert a != Masks({'x': torch.ones(4, dtype=torch.bool), 'y': torch.zeros(3, dtype=torch.bool)})
    assert a != Masks({'x': torch.ones(2, 2, dtype=torch.bool)})

@pytest.mark.parametrize('bad', [torch.full((2, 3), 0.3), torch.tensor([[0., 1., 2.], [1., 0., 1.]]),
                                 torch.tensor([[1, -1, 0], [0, 0, 0]]), torch.tensor([[0., math.nan, 1.], [1., 1., 1.]]),
                                 torch.tensor([[0.5, 1., 1.], [1., 1., 1.]], dtype=torch.float16)],
                         ids=['0.3', '2', '-1', 'nan', 'half'])
def test_masks_refuse_values_other_than_0_and_1(bad):
    "A float mask is not rounded: 0.3 would become True. The error names the layer and says what to pass."
    with pytest.raises(ValueError, match=r"the mask of layer 'head\.fc' holds values other than 0 and 1.*pass a boolean tensor"):
        Masks({'conv': torch.ones(3, dtype=torch.bool), 'head.fc': bad})

def test_masks_accept_0_1_values_of_any_dtype():
    want = Masks({'a': torch.tensor([[True, False], [False, True]])})
    for ok in ([[1, 0], [0, 1]], torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8),
               torch.tensor([[1., 0.], [-0., 1.]], dtype=torch.float64), torch.tensor([[1., 0.], [0., 1.]], dtype=torch.bfloat16)):
        got = Masks({'a': ok})
        assert got == want and got['a'].dtype == torch.bool
    assert Masks({'a': torch.zeros(2, 2)}).kept == 0 and Masks({'a': torch.ones(2, 2)}).kept == 4

def test_from_flat_roundtrip(model):
    for s in (0.0, 0.5, 0.99):
        m = random_masks(model, s, seed=3)
        assert Masks.from_flat(m.flat(), m.shapes) == m
        assert m.flat().dtype == torch.bool and m.flat().numel() == m.total
    m = random_masks(model, 0.5, seed=3)
    with pytest.raises(ValueError, match='entries'):
        Masks.from_flat(m.flat()[:-1], m.shapes)

def test_save_load_roundtrip(tmp_path, masks):
    p = masks.save(tmp_path / 'm.pt')
    back = Masks.load(p)
    assert back == masks
    assert all(c.dtype == torch.bool and c.device.type == 'cpu' for c in back.values())
    assert Masks.load(str(p)) == masks
    raw = torch.load(p, weights_only=True)        # plain tensors only: loadable without unpickling code
    assert torch.equal(raw['masks']['7'], masks['7'])

def test_load_rejects_other_files(tmp_path, model):
    p = tmp_path / 'sd.pt'
    torch.save(model.state_dict(), p)
    with pytest.raises(ValueError, match='not a force_edu mask file'): Masks.load(p)
    torch.save([1, 2, 3], p)
    with pytest.raises(ValueError, match='not a force_edu mask file'): Masks.load(p)
    torch.save({'format': 'other', 'masks': {}}, p)
    with pytest.raises(ValueError, match='not a force_edu mask file'): Masks.load(p)

class _Evil:
    def __reduce__(self): return (print, ('pwned',))

def test_load_does_not_unpickle_code(tmp_path):
    p = tmp_path / 'evil.pt'
    torch.save({'format': 'force_edu.Masks', 'version': 1, 'masks': _Evil()}, p)
    with pytest.raises(ValueError, match="not a force_edu mask file"): Masks.load(p)

def test_load_text_file_clear_error(tmp_path):
    p = tmp_path / 'notes.txt'
    p.write_text('hello, these are not masks\n')
    with pytest.raises(ValueError, match='not a force_edu mask file'): Masks.load(p)

def test_load_truncated_mask_file_clear_error(tmp_path):
    p = tmp_path / 'bad.pt'
    torch.save({'format': 'force_edu.Masks', 'version': 1}, p)
    with pytest.raises(ValueError): Masks.load(p)

# ---------------------------------------------------------------- apply / from_model / remove

def test_apply_then_from_model(model, masks):
    dense = {n: w.detach().clone() for n, w in weights(model).items()}
    assert masks.apply(model) is model
    assert all(is_pruned(model[int(n)]) for n in masks)
    assert not is_pruned(model[1])
    assert Masks.from_model(model) == masks
    for n, w in weights(model).items():
        assert (w[~masks[n]] == 0).all() and torch.equal(w[masks[n]], dense[n][masks[n]])

def test_from_model_needs_a_pruned_model(model):
    with pytest.raises(ValueError, match='carries no pruning mask'): Masks.from_model(model)

def test_apply_twice_is_a_no_op(model, masks):
    masks.apply(model)
    before = model_fingerprint(model)
    hooks = [dict(mod._load_state_dict_post_hooks) for mod in model.modules()]
    buffers = [n for n, _ in model.named_buffers()]
    masks.apply(model)
    assert same_fingerprint(before, model_fingerprint(model))
    assert [dict(mod._load_state_dict_post_hooks) for mod in model.modules()] == hooks
    assert [n for n, _ in model.named_buffers()] == buffers
    from force_edu.masks import _mask_grads   # the one forward pre-hook: gradient masks for copies (no parametrization)
    assert all(list(mod._forward_pre_hooks.values()) in ([], [_mask_grads]) for mod in model.modules())
    assert Masks.from_model(model) == masks

def test_apply_a_different_mask_raises(model, masks):
    other = random_masks(model, 0.9, seed=1)
    masks.apply(model)
    before = model_fingerprint(model)
    with pytest.raises(ValueError, match='already carries a different pruning mask'): other.apply(model)
    assert same_fingerprint(before, model_fingerprint(model))
    # a mask that agrees on the first layers and differs only on the last: nothing is changed either
    mixed = Masks({**masks, '7': other['7']})
    with pytest.raises(ValueError, match="layer '7'"): mixed.apply(model)
    assert same_fingerprint(before, model_fingerprint(model))
    # after remove, a new mask can go on
    masks.remove(model)
    other.apply(model)
    assert Masks.from_model(model) == other

def test_remove_keeps_parameter_objects(model, masks):
    ids = {n: id(w) for n, w in weights(model).items()}
    all_ids = [id(p) for p in model.parameters()]
    masks.apply(model)
    masks.remove(model)
    assert not any(is_pruned(mod) for mod in model.modules())
    assert not any(mod._forward_pre_hooks or mod._load_state_dict_post_hooks for mod in model.modules())
    assert not any(n.endswith('weight_keep') for n, _ in model.named_buffers())
    for n, w in weights(model).items():
        assert type(w) is nn.Parameter and w.requires_grad and id(w) == ids[n]
        assert (w[~masks[n]] == 0).all() and (w[masks[n]] != 0).all()
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    assert set(model.state_dict()) == set(cnn().state_dict())
    masks.remove(model)   # removing again is harmless

def test_optimizer_created_before_apply_still_trains(model, masks):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w7 = model[7].weight
    masks.apply(model)
    keep_pruned(opt, model)   # plain PyTorch's one call
    x, y = digit_batches(1)[0]
    start = model[7].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    moved = model[7].weight.detach()
    assert not torch.equal(moved[masks['7']], start[masks['7']])     # the kept weights train
    assert (moved[~masks['7']] == 0).all()
    masks.remove(model)
    assert model[7].weight is w7
    opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()  # the same optimizer, after remove

@pytest.mark.parametrize('make_opt', [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
], ids=['sgd_momentum_wd', 'sgd_nesterov', 'adam_wd', 'adamw'])
@pytest.mark.parametrize('before', [True, False], ids=['opt_before_apply', 'opt_after_apply'])
def test_pruned_weights_stay_zero_under_training(make_opt, before):
    model = cnn()
    masks = force_masks(model, 0.95)
    if before: opt = make_opt(model.parameters())
    masks.apply(model)
    if not before: opt = make_opt(model.parameters())
    keep_pruned(opt, model)
    at_step = []   # the pruned gradients that are not 0 when the step runs (a hook registered after keep_pruned's)
    opt.register_step_pre_hook(lambda o, a, k: at_step.append(sum(int(model.get_submodule(n).weight.grad[~masks[n]].count_nonzero())
                                                                   for n in masks)))
    model.train()
    for x, y in digit_batches(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for n in masks:
            w = model.get_submodule(n).weight
            assert type(w) is nn.Parameter and (w[~masks[n]] == 0).all()
    assert at_step == [0] * 8
    for n in masks: assert (model.get_submodule(n).weight[masks[n]] != 0).all()
    masks.remove(model)
    for n in masks: assert (model.get_submodule(n).weight[~masks[n]] == 0).all()
    assert Masks.from_zeros(model) == masks

def test_optimizer_state_from_a_dense_run():
    "Zero gradients alone let a loaded dense momentum move pruned weights; `keep_pruned` re-zeroes them after each step."
    dense = cnn()
    opt = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9)
    for x, y in digit_batches(3):
        opt.zero_grad(); F.cross_entropy(dense(x), y).backward(); opt.step()
    for rezero in (False, True):
        model = cnn()
        masks = force_masks(model, 0.9)
        masks.apply(model)
        o = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        o.load_state_dict(opt.state_dict())
        h = keep_pruned(o, model) if rezero else None
        x, y = digit_batches(1)[0]
        o.zero_grad(); F.cross_entropy(model(x), y).backward(); zero_pruned_grads(model); o.step()
        moved = sum(int(model.get_submodule(n).weight[~masks[n]].count_nonzero()) for n in masks)
        assert (moved == 0) if rezero else (moved > 0), (rezero, moved)

def test_nan_and_inf_become_exact_zeros(model, masks):
    masks.apply(model)
    for n in masks:
        w = model.get_submodule(n).weight
        w.grad = torch.full_like(w, float('nan'))
        with torch.no_grad(): w[~masks[n]] = float('inf')
    zero_pruned_grads(model); zero_pruned_weights(model)
    for n in masks:
        w = model.get_submodule(n).weight
        assert (w.grad[~masks[n]] == 0).all() and w.grad[masks[n]].isnan().all()
        assert (w[~masks[n]] == 0).all() and torch.isfinite(w).all()

def test_channels_last_weights(model, masks):
    model = model.to(memory_format=torch.channels_last)
    assert not model[3].weight.is_contiguous()
    masks.apply(model)
    with torch.no_grad(): model[3].weight.add_(1.)
    zero_pruned_weights(model)
    assert Masks.from_zeros(model) == masks

def test_keep_pruned_bad_input(model, masks):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match='carries no mask'): keep_pruned(opt, model)
    masks.apply(model)
    with pytest.raises(ValueError, match='needs a torch.optim.Optimizer'): keep_pruned(object(), model)
    h = keep_pruned(opt, model)
    h.remove()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks

def test_state_dict_into_another_pruned_model(tmp_path):
    a, b = cnn(seed=0), cnn(seed=1)
    ma = force_masks(a, 0.9)
    mb = random_masks(b, 0.8, seed=0)
    ma.apply(a); mb.apply(b)
    opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    keep_pruned(opt, a)
    for x, y in digit_batches(3):
        opt.zero_grad(); F.cross_entropy(a(x), y).backward(); opt.step()
    assert list(a.state_dict()) == list(cnn().state_dict())   # the keys of the unpruned model: no mask in it
    p = tmp_path / 'a.pt'
    torch.save(a.state_dict(), p)
    x = digit_batches(1)[0][0]
    # into a fresh, unpruned model, strictly; the mask comes back from the zeros
    fresh = cnn(seed=2)
    fresh.load_state_dict(torch.load(p, weights_only=True), strict=True)
    assert Masks.from_zeros(fresh) == ma
    a.eval(); fresh.eval()
    assert torch.equal(a(x), fresh(x))
    # into a model pruned with another mask: it keeps its own mask and prunes the loaded weights with it
    b.load_state_dict(torch.load(p, weights_only=True))
    assert Masks.from_model(b) == mb
    for n in mb:
        assert torch.equal(b.get_submodule(n).weight, a.get_submodule(n).weight * mb[n])
    # and a pruned state dict into a fresh model pruned with the same masks, via Masks.load
    ma.save(tmp_path / 'ma.pt')
    c = cnn(seed=2)
    Masks.load(tmp_path / 'ma.pt').apply(c)
    c.load_state_dict(torch.load(p, weights_only=True))
    c.eval()
    assert torch.equal(c(x), a(x))

def test_apply_on_a_float64_model():
    model = cnn().double()
    masks = random_masks(model, 0.9, seed=0)
    masks.apply(model)
    assert model[0].weight_keep.dtype == torch.bool and model[0].weight.dtype == torch.float64
    assert Masks.from_model(model) == masks == Masks.from_zeros(model)

# ---------------------------------------------------------------- a pruned model is a plain model

def _trained_pruned(steps=3):
    model = cnn()
    masks = force_masks(model, 0.9)
    masks.apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    keep_pruned(opt, model)
    for x, y in digit_batches(steps):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    return model, masks, opt

def _pruned_nonzero(model, masks): return sum(int(model.get_submodule(n).weight[~masks[n]].count_nonzero()) for n in masks)

def test_deepcopy_and_pickle():
    model, masks, _ = _trained_pruned()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert Masks.from_model(twin) == masks and _pruned_nonzero(twin, masks) == 0
        assert all(type(p) is nn.Parameter for p in twin.parameters())
        assert twin[0].weight is not model[0].weight
        # the copy is a pruned model of its own: it trains and keeps its zeros
        opt = torch.optim.Adam(twin.parameters(), lr=1e-2)
        keep_pruned(opt, twin)
        for x, y in digit_batches(2):
            opt.zero_grad(); F.cross_entropy(twin(x), y).backward(); opt.step()
        assert _pruned_nonzero(twin, masks) == 0
        twin.load_state_dict(cnn(seed=5).state_dict())   # dense weights in: pruned by the copy's own masks
        assert Masks.from_zeros(twin) == masks

def test_averaged_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    model, masks, opt = _trained_pruned(1)
    swa, ema = AveragedModel(model), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    for x, y in digit_batches(4):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
        swa.update_parameters(model); ema.update_parameters(model)
    for avg in (swa, ema):
        assert _pruned_nonzero(avg.module, masks) == 0
        assert Masks.from_model(avg.module) == masks == Masks.from_zeros(avg.module)
    assert list(swa.module.state_dict()) == list(cnn().state_dict())

def test_weights_only_state_dict(tmp_path):
    model, masks, _ = _trained_pruned()
    torch.save(model.state_dict(), tmp_path / 'sd.pt')
    sd = torch.load(tmp_path / 'sd.pt', weights_only=True)
    assert list(sd) == list(cnn().state_dict()) and all(type(v) is torch.Tensor for v in sd.values())
    fresh = cnn(seed=3)
    fresh.load_state_dict(sd, strict=True)
    assert Masks.from_zeros(fresh) == masks
    model.eval(); fresh.eval()
    x = digit_batches(1)[0][0]
    assert torch.equal(model(x), fresh(x))

def test_torch_compile():
    "A pruned model compiles (the mask is not in its forward pass) and trains compiled with its zeros kept."
    model, masks, _ = _trained_pruned(1)
    compiled = torch.compile(model)
    x, y = digit_batches(1)[0]
    model.eval()
    assert torch.allclose(compiled(x), model(x), atol=1e-5)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    keep_pruned(opt, model)
    for x, y in digit_batches(3):
        opt.zero_grad(); F.cross_entropy(compiled(x), y).backward(); opt.step()
    assert _pruned_nonzero(model, masks) == 0
    assert all(model.get_submodule(n).weight[masks[n]].ne(0).all() for n in masks)
