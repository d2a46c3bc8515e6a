"""Files written by force_edu before issue 17 (`torch.nn.utils.prune`: `weight_orig` x `weight_mask`) still load.

`tests/data/` holds what `tests/data/make_legacy_files.py` wrote with that version (commit fbdc4e1): a `Masks.save` file,
a pruned state dict, a whole pickled pruned model, and a fastai `Learner.save` checkpoint with its optimizer state; and
`legacy_expected.pt`, the effective weights (`weight_orig * weight_mask`) and masks they held."""
import shutil, sys, warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from force_edu.masks import Masks, prunable_layers, is_pruned, keep_pruned

DATA = Path(__file__).resolve().parent / 'data'
sys.path.insert(0, str(DATA))
from make_legacy_files import legacy_net, legacy_data   # noqa: E402 (the same architecture and data as when they were written)

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def expected(): return torch.load(DATA/'legacy_expected.pt', weights_only=True)


def _plain(model):
    return all(type(l.weight) is nn.Parameter and not hasattr(l, 'weight_orig') and not hasattr(l, 'weight_mask')
               for l in prunable_layers(model).values())


def test_mask_file(expected):
    masks = Masks.load(DATA/'legacy_masks.pt')
    assert masks == Masks(expected['masks'])
    assert abs(masks.sparsity - 0.9) < 0.01


def test_old_state_dict_into_a_fresh_model(expected):
    "An old pruned state dict: `weight` is `weight_orig * weight_mask`, the masks are its `weight_mask`s."
    from force_edu.checkpoints import _upgrade_state
    old = torch.load(DATA/'legacy_state_dict.pt', weights_only=True)
    assert '0.weight_orig' in old and '0.weight_mask' in old
    state, masks = _upgrade_state(old)
    assert masks == Masks(expected['masks'])
    model = legacy_net()
    assert list(state) == list(model.state_dict())
    model.load_state_dict(state, strict=True)
    masks.apply(model)
    for n, l in prunable_layers(model).items(): assert torch.equal(l.weight, expected['state_dict'][n])
    assert Masks.from_zeros(model) == masks == Masks.from_model(model)


def test_old_pickled_model_converts(expected):
    "A whole model pickled while pruned by `torch.nn.utils.prune`: it runs, `from_model` reads its mask, `apply` makes it plain."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        old = torch.load(DATA/'legacy_model.pt', weights_only=False)
    x, y = legacy_data()
    out = old.eval()(x)
    assert all(is_pruned(l) for l in prunable_layers(old).values())
    masks = Masks.from_model(old)
    assert masks == Masks(expected['masks'])
    masks.apply(old)   # plain parameters from now on, the same objects in the same order
    assert _plain(old) and [n for n, _ in old.named_parameters()] == [n for n, _ in legacy_net().named_parameters()]
    assert list(old.state_dict()) == list(legacy_net().state_dict())
    torch.testing.assert_close(old(x), out)
    for n, l in prunable_layers(old).items(): assert torch.equal(l.weight, expected['state_dict'][n])
    opt = torch.optim.Adam(old.parameters(), lr=1e-2)
    keep_pruned(opt, old)
    old.train()
    for _ in range(3):
        opt.zero_grad(); F.cross_entropy(old(x), y).backward(); opt.step()
    assert Masks.from_zeros(old) == masks


def test_old_learner_checkpoint(tmp_path, expected):
    "`learn.load` of an old `Learner.save` checkpoint (with its optimizer state) into a fresh learner, then training on."
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from force_edu.callback import ForceCallback, masks_path
    (tmp_path/'models').mkdir()
    shutil.copy(DATA/'models'/'legacy_learner.pth', tmp_path/'models'/'legacy_learner.pth')
    x, y = legacy_data()
    dset = list(zip(x, y))
    dls = DataLoaders.from_dsets(dset[:48], dset[48:], bs=16, device='cpu', num_workers=0)
    cb = ForceCallback(0.5, steps=2, progress=False, verbose=False)
    learn = Learner(dls, legacy_net(), loss_func=F.cross_entropy, cbs=cb, path=tmp_path)
    if hasattr(learn, 'progress'): learn.remove_cb(learn.progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        learn.load('legacy_learner', with_opt=True)
    assert not [w for w in caught if 'optimizer state' in str(w.message)], [str(w.message) for w in caught]
    want = Masks(expected['learner_masks'])
    assert learn.pruning_masks == want and cb.masks == want and _plain(learn.model)
    for n, l in prunable_layers(learn.model).items(): assert torch.equal(l.weight, expected['learner'][n])
    assert any(len(s) for s in learn.opt.state.values())   # the old momentum/moments, on the right parameters
    learn.fit(1, 1e-2)                                      # the callback adopts the loaded mask
    assert cb.report is None and Masks.from_zeros(learn.model) == want
    learn.save('resaved')                                   # and saves in the new format: plain keys, mask beside
    assert '0.weight' in torch.load(tmp_path/'models'/'resaved.pth', weights_only=False)['model']
    assert Masks.load(masks_path(tmp_path/'models'/'resaved.pth')) == want
