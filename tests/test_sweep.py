"""`force_edu.sweep` beyond its notebook: a sweep resumes where it stopped, Ctrl-C keeps every finished run (also in the
middle of writing results.json), and bad arguments fail before anything runs or is written. Tiny networks on the digits:
about 35 s of CPU time on one thread."""
import json, re

import pytest
import torch
import torch.nn as nn
from force_edu.cli import COMMANDS, CommandError

import force_edu.sweep as fs
from force_edu.sweep import ARCHS, Sweep, load_results, run_sweep, sweep

torch.set_num_threads(1)

KW = dict(data='digits', arch='vgg', methods=['snip', 'force'], sparsities=[0.5], epochs=1, seeds=[0], steps=3,
          n_train=256, bs=64, width=4)


def _run(tmp_path, **kw):
    return run_sweep(**{**KW, 'out': tmp_path/'sw', 'progress': False, 'verbose': False, **kw})


def _results(tmp_path): return load_results(tmp_path/'sw'/'results.json')


@pytest.fixture
def runs(monkeypatch):
    "Record the (method, sparsity, seed) of every run that trains."
    calls, orig = [], fs.train_run
    def counting(cfg, method, sparsity, seed, *a, **k):
        calls.append((method, sparsity, seed))
        return orig(cfg, method, sparsity, seed, *a, **k)
    monkeypatch.setattr(fs, 'train_run', counting)
    return calls


# ---- resume ---------------------------------------------------------------------------------------------------------

def test_resume_skips_finished_runs(tmp_path, runs):
    df = _run(tmp_path)
    assert runs == [('dense', 0., 0), ('snip', 0.5, 0), ('force', 0.5, 0)]
    assert len(df) == 3
    first = _results(tmp_path)
    runs.clear()
    df = _run(tmp_path)                        # the same sweep again: nothing trains, nothing changes
    assert runs == [] and len(df) == 3
    assert _results(tmp_path) == first
    _run(tmp_path, sparsities=[0.5, 0.8], seeds=[0, 1])   # only the new points train
    assert sorted(runs) == sorted([('snip', 0.8, 0), ('force', 0.8, 0), ('dense', 0., 1), ('snip', 0.5, 1), ('force', 0.5, 1),
                                   ('snip', 0.8, 1), ('force', 0.8, 1)])
    assert len(_results(tmp_path)) == 10
    runs.clear()
    _run(tmp_path, steps=4)                    # FORCE uses `steps`, SNIP and dense do not: only FORCE trains again
    assert runs == [('force', 0.5, 0)]
    runs.clear()
    _run(tmp_path, epochs=2, methods=['snip'])   # another training configuration: a new dense run too
    assert runs == [('dense', 0., 0), ('snip', 0.5, 0)]
    assert len(_results(tmp_path)) == 13       # the records of the other configurations are kept


def test_resume_with_the_default_size_spelled_out(tmp_path, runs):
    _run(tmp_path)
    runs.clear()
    _run(tmp_path, size=16)                    # the digits' default size: the same runs
    assert runs == []


# ---- Ctrl-C ---------------------------------------------------------------------------------------------------------

def test_interrupted_sweep_keeps_the_finished_run(tmp_path, monkeypatch):
    orig, calls = fs.train_run, []
    def interrupted(*a, **k):
        calls.append(a[1])
        if len(calls) == 2: raise KeyboardInterrupt   # Ctrl-C during the second run
        return orig(*a, **k)
    monkeypatch.setattr(fs, 'train_run', interrupted)
    with pytest.raises(KeyboardInterrupt): _run(tmp_path)
    recs = json.loads((tmp_path/'sw'/'results.json').read_text())
    assert [r['method'] for r in recs] == ['dense']
    assert (tmp_path/'sw'/'accuracy_vs_sparsity.png').exists()
    assert not [p.name for p in (tmp_path/'sw').iterdir() if p.name.startswith('.')], "a temporary file was left behind"
    # the same sweep again finishes the rest and only the rest
    calls.clear()
    monkeypatch.setattr(fs, 'train_run', lambda *a, **k: (calls.append(a[1]), orig(*a, **k))[1])
    _run(tmp_path)
    assert calls == ['snip', 'force']
    assert [r['method'] for r in _results(tmp_path)] == ['dense', 'snip', 'force']


def test_interrupt_while_writing_results_keeps_the_old_file(tmp_path, monkeypatch):
    real_replace, n = fs.os.replace, []
    def replace(src, dst):
        if str(dst).endswith('results.json'):
            n.append(dst)
            if len(n) == 2: raise KeyboardInterrupt   # Ctrl-C between writing the new file and renaming it
        return real_replace(src, dst)
    monkeypatch.setattr(fs.os, 'replace', replace)
    with pytest.raises(KeyboardInterrupt): _run(tmp_path)
    assert [r['method'] for r in _results(tmp_path)] == ['dense']   # valid JSON, the first run only
    assert not [p.name for p in (tmp_path/'sw').iterdir() if p.name.startswith('.')]


def test_cli_ctrl_c_exits_130_and_keeps_runs(tmp_path, monkeypatch, capsys):
    orig, calls = fs.train_run, []
    def interrupted(*a, **k):
        calls.append(a[1])
        if len(calls) == 2: raise KeyboardInterrupt
        return orig(*a, **k)
    monkeypatch.setattr(fs, 'train_run', interrupted)
    status = sweep(**{**KW, 'out': str(tmp_path/'sw'), 'progress': False})
    assert status == 130
    assert 'interrupted: 1 run(s) finished and saved' in capsys.readouterr().out
    assert len(_results(tmp_path)) == 1


# ---- bad arguments --------------------------------------------------------------------------------------------------

@pytest.fixture
def no_training(monkeypatch):
    def fail(*a, **k): raise AssertionError("a run started although the arguments are bad")
    monkeypatch.setattr(fs, 'train_run', fail)


@pytest.mark.parametrize('kw, msg', [
    (dict(methods=['forse']), "unknown pruning method 'forse'; known methods: "),
    (dict(methods=['snip', 'FORCE']), "unknown pruning method 'FORCE'"),
    (dict(methods=[3]), 'method names are strings'),
    (dict(methods=[], dense=False), 'nothing to run'),
    (dict(sparsities=[1.0]), 'sparsity must be a number in [0, 1)'),
    (dict(sparsities=[0.5, 1.5]), 'sparsity must be a number in [0, 1)'),
    (dict(sparsities=[-0.1]), 'sparsity must be a number in [0, 1)'),
    (dict(sparsities=[float('nan')]), 'sparsity must be a number in [0, 1)'),
    (dict(sparsities=['0.9']), 'sparsity must be a number in [0, 1)'),
    (dict(sparsities=[True]), 'sparsity must be a number in [0, 1)'),
    (dict(sparsities=[]), 'no sparsity in (0, 1) given'),
    (dict(sparsities=[0.99999]), 'keeps round('),        # no weight of this network would be left
    (dict(steps=0), 'steps must be an integer >= 1'),
    (dict(steps=10**6), 'steps=1000000 is more than'),
    (dict(seeds=[-1]), 'seeds must be an integer >= 0'),
    (dict(seeds=[]), 'at least one seed'),
    (dict(epochs=0), 'epochs must be an integer >= 1'),
    (dict(epochs=1.5), 'epochs must be an integer >= 1'),
    (dict(bn_mode='frozen'), 'bn_mode must be'),
    (dict(mode='cosine'), 'mode must be one of'),
    (dict(loss='mse'), 'loss must be one of'),
    (dict(lr=0), 'lr must be a positive number'),
    (dict(n_train=0), 'n_train must be'),
    (dict(n_train=5000), 'n_train must be below'),
    (dict(n_train=32), 'gives no full batch'),
    (dict(arch='vgg99'), "unknown architecture 'vgg99'"),
])
def test_bad_arguments_rejected_before_anything_runs(tmp_path, no_training, kw, msg):
    with pytest.raises(ValueError, match=re.escape(msg)): _run(tmp_path, **kw)
    assert not (tmp_path/'sw').exists(), "nothing may be written for bad arguments"


def test_missing_data_rejected(tmp_path, no_training):
    with pytest.raises(ValueError, match="data must be 'fashion-mnist', 'digits' or an existing folder"):
        _run(tmp_path, data=str(tmp_path/'nowhere'))
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError): _run(tmp_path, data=str(tmp_path/'empty'))
    assert not (tmp_path/'sw').exists()


def test_arch_that_does_not_fit_the_images(tmp_path, no_training, monkeypatch):
    bad = lambda n_in, n_out, width: nn.Sequential(nn.Conv2d(n_in, 4, 3), nn.Flatten(), nn.Linear(10, n_out))
    monkeypatch.setitem(ARCHS, 'bad', bad)
    with pytest.raises(ValueError, match=r"arch='bad' does not run on the \(1, 16, 16\) images"): _run(tmp_path, arch='bad')


def test_damaged_results_file_is_left_alone(tmp_path, no_training):
    (tmp_path/'sw').mkdir()
    (tmp_path/'sw'/'results.json').write_text('[{"method": "snip", ')
    with pytest.raises(ValueError, match='not valid JSON'): _run(tmp_path)
    (tmp_path/'sw'/'results.json').write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a sweep's results file"): _run(tmp_path)
    assert (tmp_path/'sw'/'results.json').read_text() == '{"a": 1}'


def test_cli_errors_are_one_line(tmp_path, no_training):
    with pytest.raises(ValueError, match=r"^unknown pruning method 'forse'"):   # the declared checks, as any call
        sweep(**{**KW, 'methods': ['forse'], 'out': str(tmp_path/'sw')})
    with pytest.raises(ValueError, match=r'^sparsity must be'):
        sweep(**{**KW, 'sparsities': [1.0], 'out': str(tmp_path/'sw')})
    with pytest.raises(CommandError, match=r"^force-edu sweep: error: unknown architecture 'vgg99'"):   # what Sweep finds
        sweep(**{**KW, 'arch': 'vgg99', 'out': str(tmp_path/'sw')})
    assert not (tmp_path/'sw').exists()


def test_cli_parses_lists():
    p = COMMANDS['sweep'].parser('sweep')
    a = vars(p.parse_args('--methods random snip --sparsities 0.9 0.99 0.998 --seeds 0 1 2 --no-dense --n-train 100'.split()))
    assert (a['methods'], a['sparsities'], a['seeds'], a['dense'], a['n_train']) == (['random', 'snip'], [0.9, 0.99, 0.998],
                                                                                  [0, 1, 2], False, 100)
    d = vars(p.parse_args([]))
    assert (list(d['methods']), list(d['sparsities']), d['data'], d['arch']) == (['random', 'snip', 'force', 'iter_snip'],
                                                                               [0.9, 0.99, 0.998], 'fashion-mnist', 'vgg')


def test_sparsity_zero_means_the_dense_run(tmp_path, runs):
    _run(tmp_path, methods=['snip'], sparsities=[0, 0.5], dense=False)
    assert runs == [('dense', 0., 0), ('snip', 0.5, 0)]


def test_committed_records_keep_their_keys():
    "Every committed record's run key as the code before the options were declared once computed it: per study, the hash"
    " of its first records' keys in file order (a sweep appends). A change to `run_key`, or to a default it resolves, fails."
    import hashlib, pathlib
    root = pathlib.Path(__file__).parents[1]/'nbs'/'tutorials'/'sweeps'
    pinned = {'fmnist_resnet': (111, '7899574c07823a11'), 'fmnist_vgg': (111, 'db9ce6a11267b647'),
              'fmnist_vgg_steps': (30, '93ac0424e46a1f4a'), 'fmnist_vgg_study': (222, '831ee27225b01312')}
    for study, (n, h) in pinned.items():
        keys = [fs.run_key(r) for r in load_results(root/study/'results.json')][:n]
        assert len(keys) == n and hashlib.sha1('\n'.join(keys).encode()).hexdigest()[:16] == h, study
