"""Writes the files of `tests/test_legacy_files.py`: masks and pruned checkpoints made by force_edu before issue 17
(commit fbdc4e1, where `Masks.apply` used `torch.nn.utils.prune`: `weight_orig` x `weight_mask`). Run once, with that
version installed, from the repository root: `OMP_NUM_THREADS=1 python tests/data/make_legacy_files.py`. Kept for the
record; the files it wrote are committed and must keep loading.

- `legacy_masks.pt`: `Masks.save` of a 90%-sparse mask of `legacy_net()`;
- `legacy_state_dict.pt`: `torch.save(model.state_dict())` of that net pruned by `Masks.apply` and trained a few steps
  (keys `0.weight_orig`, `0.weight_mask`, ...);
- `legacy_model.pt`: `torch.save(model)` of the same pruned model (a whole-module pickle, `weights_only=False`);
- `models/legacy_learner.pth`: `Learner.save(..., with_opt=True)` of a fastai `Learner` with `ForceCallback(0.9)`
  after one epoch (`{'model': ..., 'opt': ...}`, the model's keys as above);
- `legacy_expected.pt`: the effective weights `weight_orig * weight_mask` of every checkpoint, and its mask, to compare.
"""
import torch, torch.nn as nn, torch.nn.functional as F
from pathlib import Path

HERE = Path(__file__).resolve().parent

def legacy_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))

def legacy_data(n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

def effective(model):
    from force_edu.masks import prunable_layers
    return {n: (l.weight_orig * l.weight_mask).detach().clone() for n, l in prunable_layers(model).items()}

if __name__ == '__main__':
    torch.set_num_threads(1)
    from force_edu.masks import Masks, prunable_layers
    from force_edu.methods import prune_at_init
    x, y = legacy_data()
    model = legacy_net()
    masks = prune_at_init(model, [(x[:32], y[:32]), (x[32:], y[32:])], 0.9, 'force', steps=2)
    masks.save(HERE/'legacy_masks.pt')
    masks.apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for i in range(3):
        opt.zero_grad(); F.cross_entropy(model(x), y).backward(); opt.step()
    assert set(model.state_dict()) >= {'0.weight_orig', '0.weight_mask'}
    torch.save(model.state_dict(), HERE/'legacy_state_dict.pt')
    torch.save(model, HERE/'legacy_model.pt')
    expected = dict(state_dict=effective(model), masks=masks.masks)

    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.callback.progress import ProgressCallback  # noqa: F401 (patches `Learner.no_bar`)
    from force_edu.callback import ForceCallback
    dset = list(zip(x, y))
    dls = DataLoaders.from_dsets(dset[:48], dset[48:], bs=16, device='cpu', num_workers=0)
    cb = ForceCallback(0.9, steps=2, progress=False, verbose=False)
    learn = Learner(dls, legacy_net(), loss_func=F.cross_entropy, cbs=cb, path=HERE)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    learn.save('legacy_learner', with_opt=True)
    expected.update(learner=effective(learn.model), learner_masks=cb.masks.masks)
    torch.save(expected, HERE/'legacy_expected.pt')
    print('wrote', sorted(p.name for p in HERE.rglob('*.p*')))
