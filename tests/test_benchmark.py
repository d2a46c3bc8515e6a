"`benchmarks/pruning_speed.py` runs end to end (`--quick`, a tiny model) and writes JSON of the documented shape; no timing is asserted."
import json, math, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'pruning_speed.py'
METHODS = ['force', 'iter_snip', 'grasp_it', 'synflow', 'snip', 'grasp']


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'quick.json'
    r = _run('--quick', '--out', str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, json.loads(out.read_text())


def _pos(x): return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_help():
    r = _run('--help', timeout=120)
    assert r.returncode == 0, r.stderr
    for opt in ('--models', '--methods', '--steps', '--batch-size', '--repeats', '--device', '--out', '--quick'):
        assert opt in r.stdout


def test_top_level(quick):
    _, res = quick
    assert set(res) >= {'machine', 'command', 'config', 'rows', 'training', 'scaling', 'eager_minimum', 'per_weight'}
    m = res['machine']
    assert {'torch', 'cpu', 'cpu_count', 'threads', 'device'} <= set(m) and m['threads'] >= 1
    assert res['config']['quick'] is True and res['command'].startswith('python benchmarks/pruning_speed.py')


def test_rows(quick):
    stdout, res = quick
    rows = {r['method']: r for r in res['rows']}
    assert list(rows)[:len(METHODS)] == METHODS
    for name in METHODS:
        r = rows[name]
        assert r['model'] == 'tiny' and r['device'] == 'cpu'
        assert _pos(r['floor_s']) and _pos(r['method_s']) and _pos(r['ratio'])
        assert math.isclose(r['ratio'], r['method_s'] / r['floor_s'])
        assert len(r['floor_runs']) == len(r['method_runs']) == res['config']['repeats']
        assert r['steps'] == (res['config']['steps'] if name in ('force', 'iter_snip', 'grasp_it', 'synflow') else 1)
        assert r['mem_ratio'] is None or _pos(r['mem_ratio'])
    assert _pos(rows['force']['mem_ratio']) and _pos(rows['force']['mem_dense_mb'])  # --quick measures force's memory
    assert _pos(rows['force']['mem_ratio_live']) and _pos(rows['force']['mem_dense_live_mb'])   # and with LIVE_ENV
    assert math.isclose(rows['force']['mem_ratio_live'], rows['force']['mem_method_live_mb'] / rows['force']['mem_dense_live_mb'])
    assert 'force_keep' in rows and rows['force_keep']['steps'] == res['config']['steps']   # the time/memory trade-off row
    header = stdout.splitlines()[stdout.splitlines().index(next(l for l in stdout.splitlines() if l.startswith('method ')))]
    for col in ('method', 'model', 'device', 'ratio', 'mem ratio', 'live mem'): assert col in header


def test_training_and_scaling(quick):
    _, res = quick
    t = res['training']
    assert _pos(t['masked_s']) and _pos(t['dense_s']) and math.isclose(t['ratio'], t['masked_s'] / t['dense_s'])
    assert any(r['method'] == t['method'] for r in res['rows'])
    steps = res['scaling']['steps']
    assert [s['steps'] for s in steps] == [2, 4]
    for s in steps: assert _pos(s['force_s']) and _pos(s['floor_s']) and _pos(s['force_per_step_s'])
    assert [r['model'] for r in res['scaling']['models']] == ['tiny']


def test_per_weight_budget(quick):
    "FORCE's overhead per weight and step, the 1.10 target's budget and the eager minimum are consistent with the rows."
    stdout, res = quick
    rows = {r['method']: r for r in res['rows']}
    e = res['eager_minimum']['tiny']
    for k in ('masked_copy_s', 'saliency_s', 'compare_s', 'per_step_s', 'per_step_keep_s'): assert _pos(e[k])
    assert math.isclose(e['per_step_s'], 2 * e['masked_copy_s'] + e['saliency_s'] + e['compare_s'])
    assert math.isclose(e['per_step_keep_s'], e['per_step_s'] - e['masked_copy_s'])
    assert e['prunable_weights'] == rows['force']['prunable_weights']
    pw = {r['method']: r for r in res['per_weight']}
    assert set(pw) == {'force', 'force_keep'}
    for meth, d in pw.items():
        r, m, T = rows[meth], rows[meth]['prunable_weights'], rows[meth]['steps']
        assert math.isclose(d['overhead_ns'], (r['method_s'] - r['floor_s']) / T / m * 1e9)
        assert math.isclose(d['budget_ns'], 0.10 * r['floor_s'] / T / m * 1e9, rel_tol=1e-9)
        per_step = e['per_step_keep_s' if meth == 'force_keep' else 'per_step_s']
        assert math.isclose(d['eager_min_ns'], per_step / m * 1e9)
        assert math.isclose(d['eager_min_ratio'], 1 + per_step * T / r['floor_s'])
    assert 'Per prunable weight and step' in stdout and 'eager minimum tiny' in stdout


def test_unknown_method_is_refused(tmp_path):
    r = _run('--methods', 'force,nope', '--out', str(tmp_path / 'x.json'), timeout=300)
    assert r.returncode != 0 and 'nope' in (r.stderr + r.stdout)
    assert not (tmp_path / 'x.json').exists()


def test_unknown_model_is_refused(tmp_path):
    r = _run('--models', 'resnet9000', '--out', str(tmp_path / 'x.json'), timeout=300)
    assert r.returncode != 0 and 'resnet9000' in (r.stderr + r.stdout)
    assert not (tmp_path / 'x.json').exists()


# ---------------------------------------------------------------------------------------------------------- the fast top-k
# `force_edu.speed.fast_topk_mask` (what the library calls) brackets the k-th largest score with a sample when there are >= 2**20
# scores (the speed-up this benchmark motivated); its result must stay that of a stable sort (the definition,
# `force_edu.masks.topk_mask`): exactly k kept, ties to the lowest index.
import torch
from force_edu import speed as M


def _reference(s, k):
    "The obviously correct top-k: a stable sort on (score descending, index ascending)."
    keep = torch.zeros(s.numel(), dtype=torch.bool)
    keep[torch.sort(s, descending=True, stable=True).indices[:k]] = True
    return keep


def _scores(kind, m, g):
    if kind == 'ties': return torch.randint(0, 4, (m,), generator=g).float()
    if kind == 'float64': return torch.rand(m, generator=g, dtype=torch.float64)
    if kind == 'pruned':   # iter_snip / grasp_it: the weights already pruned score -inf
        s = torch.randn(m, generator=g); s[torch.rand(m, generator=g) < 0.7] = -math.inf; return s
    if kind == 'inf':
        s = torch.randint(0, 3, (m,), generator=g).float(); s[torch.rand(m, generator=g) < 0.2] = math.inf; return s
    if kind == 'zeros': return torch.zeros(m)
    return torch.randn(m, generator=g).abs() * torch.randn(m, generator=g)


KINDS = ['ties', 'float64', 'pruned', 'inf', 'zeros', 'randn']


def test_topk_bracketed_matches_a_stable_sort_on_small_inputs(monkeypatch):
    "Through the sampled path (forced on small inputs, small samples so the brackets are tight or miss): same masks."
    monkeypatch.setattr(M, '_TOPK_MIN', 1)
    g = torch.Generator().manual_seed(0)
    for trial in range(1500):
        kind, m = KINDS[trial % len(KINDS)], int(torch.randint(1, 300, (1,), generator=g))
        s, k = _scores(kind, m, g), int(torch.randint(0, m + 1, (1,), generator=g))
        ref = _reference(s, k)
        assert torch.equal(M.fast_topk_mask(s, k), ref), (kind, m, k)
        if 0 < k < m:
            n_sample = int(torch.randint(1, 200, (1,), generator=g))
            got = M._topk_bracketed(s, k, n_sample)
            assert got is None or torch.equal(got, ref), (kind, m, k, n_sample)


@pytest.mark.parametrize('kind', KINDS)
def test_topk_mask_large_matches_a_stable_sort(kind):
    "On 2**20 + 3 scores (the bracketed path, an odd length), for dense, sparse and extreme k."
    g = torch.Generator().manual_seed(1)
    m = 2**20 + 3
    s = _scores(kind, m, g)
    for k in (1, 17, m // 1000, m // 100, m // 3, m - 5):
        got = M.fast_topk_mask(s, k)
        assert int(torch.count_nonzero(got)) == k
        assert torch.equal(got, _reference(s, k)), (kind, k)


def test_topk_mask_large_nan_is_refused():
    s = torch.rand(2**20 + 8); s[12345] = math.nan
    with pytest.raises(ValueError, match='NaN'): M.fast_topk_mask(s, 100)


def test_sparse_nonzero():
    g = torch.Generator().manual_seed(2)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099):
        for p in (0.0, 0.001, 0.01, 0.5, 1.0):
            mask = torch.rand(n, generator=g) < p
            assert torch.equal(M._nonzero(mask), mask.nonzero().squeeze(1)), (n, p)
            if n > 3: assert torch.equal(M._nonzero(mask[3:]), mask[3:].nonzero().squeeze(1))   # unaligned view
