"""`force_edu.analysis` beyond its notebook: `pruning_metrics` (Fig. 6) on a tiny network and random batches, and the log axis of
`sweep_plot`. A few seconds of CPU on one thread."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from force_edu.analysis import pruning_metrics, sweep_plot, sweep_summary
from force_edu.masks import Masks
from force_edu.methods import prune_at_init, repeat_batches
from force_edu.sensitivity import force_objective, gradient_norm

torch.set_num_threads(1)


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


@pytest.fixture(scope='module')
def batches():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(6)]


def test_rows_masks_and_values(batches):
    kept = {}
    df = pruning_metrics(_net, batches[:4], [0.5, 0.9], ('random', 'snip', 'force'), seeds=(0, 1), eval_batches=batches[4:],
                         steps=3, masks=kept)
    assert len(df) == 2 * (1 + 3 * 2)
    assert list(df.columns[:3]) == ['method', 'sparsity', 'seed']
    assert set(kept) == {(m, s, sd) for m in ('random', 'snip', 'force') for s in (0.5, 0.9) for sd in (0, 1)}
    for _, r in df[df.method != 'dense'].iterrows():
        c = kept[r.method, r.sparsity, r.seed]
        assert c.sparsity == pytest.approx(r.sparsity, abs=1e-3)
        assert r.objective == pytest.approx(force_objective(_net(r.seed), c, batches[4:]), rel=1e-5, abs=1e-7)
        assert r.gradient_norm == pytest.approx(gradient_norm(_net(r.seed), c, batches[4:]), rel=1e-5, abs=1e-7)
    d = df[df.method == 'dense']
    assert d.sparsity.tolist() == [0., 0.] and d.seed.tolist() == [0, 1]
    assert d.gradient_norm.iloc[1] == pytest.approx(gradient_norm(_net(1), None, batches[4:]), rel=1e-5)


def test_one_shot_methods_ignore_steps(batches):
    "`steps` is the schedule of the iterative methods; one-shot SNIP must still use one batch, not `steps` of them."
    kept = {}
    pruning_metrics(_net, batches, [0.9], ('snip', 'force'), dense=False, steps=4, masks=kept)
    assert torch.equal(kept['snip', 0.9, 0].flat(), prune_at_init(_net(0), batches[:1], 0.9, 'snip').flat())
    assert torch.equal(kept['force', 0.9, 0].flat(), prune_at_init(_net(0), repeat_batches(batches), 0.9, 'force', steps=4, loss_func=F.cross_entropy).flat())   # the analyses score with cross-entropy, the paper's L


def test_default_eval_batch_and_errors(batches):
    df = pruning_metrics(_net, batches, [0.5], ('snip',), dense=False)
    c = prune_at_init(_net(0), batches[:1], 0.5, 'snip')
    assert df.objective.item() == pytest.approx(force_objective(_net(0), c, batches[:1]), rel=1e-5)
    with pytest.raises(ValueError, match='nothing to measure'): pruning_metrics(_net, batches, [0.5], (), dense=False)


def test_sweep_plot_log_axis():
    recs = [dict(method='snip', sparsity=0.9, seed=0, gradient_norm=1.), dict(method='snip', sparsity=0.9, seed=1, gradient_norm=3.),
            dict(method='snip', sparsity=0.99, seed=0, gradient_norm=0.), dict(method='snip', sparsity=0.99, seed=1, gradient_norm=0.2),
            dict(method='dense', sparsity=0., seed=0, gradient_norm=5.)]
    fig = sweep_plot(recs, 'gradient_norm', percent=False, log=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == 'log'
    snip = [l for l in ax.get_lines() if l.get_label() == 'snip'][0]
    assert list(snip.get_ydata()) == pytest.approx([2., 0.1])
    assert sweep_summary(recs, 'gradient_norm').loc[('dense', 0.), 'mean'] == 5.
    plt.close(fig)
    assert sweep_plot(recs, 'gradient_norm', percent=False).axes[0].get_yscale() == 'linear'
    plt.close('all')
