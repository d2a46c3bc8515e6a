"The `force-edu` console script, run as a user runs it: in a subprocess."
import inspect, json, os, resource, shutil, subprocess, sys
from importlib.metadata import entry_points
from pathlib import Path
import pytest
from force_edu.cli import COMMANDS, main
from force_edu import cli

def force_edu_cmd():
    "The installed console script beside this Python (the venv's), else the one on PATH."
    exe = Path(sys.executable).parent/'force-edu'
    exe = str(exe) if exe.exists() else shutil.which('force-edu')
    assert exe, 'no `force-edu` script: install the package with `pip install -e ".[dev]"`'
    return exe

def run(*args, timeout=300, warnings='ignore'):
    "Run `force-edu *args`; `warnings=None`: with Python's default warning filters, as a user runs it."
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    if warnings: env['PYTHONWARNINGS'] = warnings
    return subprocess.run([force_edu_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)

def test_entry_point_declared():
    eps = {ep.name: ep.value for ep in entry_points(group='console_scripts')}
    assert eps.get('force-edu') == 'force_edu.cli:main'

def test_help_lists_subcommands():
    r = run('--help')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('usage: force-edu <command>')
    for name in COMMANDS:
        line = next((l for l in r.stdout.splitlines() if l.startswith(f'  {name} ')), None)
        assert line and len(line.split(None, 1)) == 2, f'no one-line summary of {name!r} in:\n{r.stdout}'

def test_subcommand_help():
    r = run('data', '--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: force-edu data') and '--json' in r.stdout

def test_data_prints_digits():
    r = run('data')
    assert r.returncode == 0, r.stderr
    assert 'digits' in r.stdout and 'digits_dls()' in r.stdout
    assert 'fashion-mnist' in r.stdout

def test_data_json():
    r = run('data', '--json')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['digits']['available'] is True

def test_unknown_subcommand():
    r = run('frobnicate')
    assert r.returncode != 0
    assert r.stderr.strip().count('\n') == 0 and "unknown command 'frobnicate'" in r.stderr
    assert r.stdout == ''

def test_bad_option_and_no_args():
    r = run('data', '--nope')
    assert r.returncode == 2 and 'unrecognized arguments: --nope' in r.stderr
    r = run()
    assert r.returncode == 2 and 'commands:' in r.stderr

def test_main_in_process(capsys):
    assert main(['--version']) == 0
    assert capsys.readouterr().out.startswith('force-edu ')
    assert main(['nope']) == 2

def test_demo_bad_sparsity_is_one_line():
    r = run('demo', '--sparsity', '1.5')
    assert r.returncode != 0 and r.stdout == ''
    assert len(r.stderr.strip().splitlines()) == 1 and 'sparsity' in r.stderr, r.stderr

def test_demo_leaves_nothing_behind(tmp_path):
    "A short demo (1 epoch, 2 pruning steps) with the default `--out`: it prints its table and leaves no file anywhere."
    cwd, home, tmp = (tmp_path/n for n in ('cwd', 'home', 'tmp'))
    for d in (cwd, home, tmp): d.mkdir()
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'HOME': str(home), 'TMPDIR': str(tmp), 'OMP_NUM_THREADS': '1'}
    env.pop('FASTAI_HOME', None)
    r = subprocess.run([force_edu_cmd(), 'demo', '--epochs', '1', '--steps', '2', '--size', '16'], capture_output=True,
                       text=True, timeout=600, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'removed at the end' in r.stdout.splitlines()[0], r.stdout
    # libraries' own caches are not the demo's output: matplotlib's font cache in $HOME, torch's (empty) inductor folder in $TMPDIR
    lib_cache = lambda p: 'matplotlib' in p.parts or p.name in ('.cache', '.config') or p.name.startswith('torchinductor_')
    stray = [p for p in [*cwd.rglob('*'), *home.rglob('*'), *tmp.iterdir()] if not lib_cache(p)]
    assert stray == [], stray
    header = next(l for l in r.stdout.splitlines() if 'accuracy' in l and 'prune_s' in l)
    for col in ('sparsity', 'dead_layers', 'accuracy', 'prune_s', 'train_s'): assert col in header.split(), header
    table = r.stdout[r.stdout.index(header):]
    for name in ('force', 'random', 'dense'): assert f'\n{name} ' in table, table

def test_demo_out_keeps_its_files(tmp_path, monkeypatch):
    "With `out` the masks and the table stay there; without it the temporary folder goes, also when a run fails."
    import tempfile
    import force_edu.demo as cb
    from force_edu.masks import Masks
    import torch.nn as nn
    def fake_run(run, out='.', sparsity=0.99, **options):   # the folder logic, without training
        (Path(out)/'models').mkdir(exist_ok=True); (Path(out)/'models'/'x.pth').write_text('weights')
        m = None if run == 'dense' else Masks.ones_like(nn.Linear(4, 2))
        return dict(method=run, sparsity=0. if run == 'dense' else sparsity, dead_layers=0, accuracy=0.5, prune_s=0., train_s=0., masks=m)
    monkeypatch.setattr(cb, 'demo_run', fake_run)
    res = cb.run_demo(out=tmp_path/'kept', epochs=1, verbose=False)
    assert sorted(p.name for p in (tmp_path/'kept').iterdir()) == ['demo_results.csv', 'force_mask.pt', 'models', 'random_mask.pt']
    assert list(res.index) == ['force', 'random', 'dense']
    scratch = tmp_path/'scratch'; scratch.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
    cb.run_demo(epochs=1, verbose=False)
    assert list(scratch.iterdir()) == []
    monkeypatch.setattr(cb, 'demo_run', lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError): cb.run_demo(epochs=1, verbose=False)
    assert list(scratch.iterdir()) == []


# --- answers before torch is imported ----------------------------------------------------------------------------------

FAST = [('--help',), ('demo', '--help'), ('sweep', '--help'), ('data', '--help'), ('demo', '--sparsity', '1.5'),
        ('demo', '--method', 'forse'), ('demo', '--epochs', '0'), ('sweep', '--methods', 'forse'),
        ('sweep', '--sparsities', '0.9', '1'), ('sweep', '--loss', 'mse'), ('sweep', '--data', 'nowhere'),
        ('sweep', '--no-such-option'), ('frobnicate',)]

@pytest.mark.parametrize('args', FAST, ids=' '.join)
def test_help_and_errors_do_not_import_torch(args):
    "`--help` and every argument error answer from the standard library: torch (seconds to import) is never loaded."
    code = ("import sys; from force_edu.cli import main; rc = main(sys.argv[1:]); "
            "mods = [m for m in ('torch', 'fastai', 'fastcore.script', 'numpy') if m in sys.modules]; "
            "print('IMPORTED', mods, file=sys.stderr); sys.exit(rc)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    err = r.stderr.splitlines()
    assert err[-1] == 'IMPORTED []', r.stderr
    assert r.returncode == (0 if args[-1] == '--help' else 2), r.stderr
    if r.returncode: assert len(err) == 2 and err[0].startswith('force-edu'), r.stderr   # one line of error
    # CPU time, not wall time: the machine may be busy; an idle one answers in about this much wall time
    assert cpu < 0.5, f"{' '.join(args)} took {cpu:.2f} s of CPU"

def test_help_lists_valid_values_and_no_flag_defaults():
    from force_edu.options import package_methods, SALIENCY_LOSS_NAMES, ABLATION_CHOICES, BN_MODES, SCHEDULE_MODES
    demo, sweep = run('demo', '--help').stdout, run('sweep', '--help').stdout
    flat = lambda t: ' '.join(t.split())
    for names in (SALIENCY_LOSS_NAMES, ABLATION_CHOICES, BN_MODES, SCHEDULE_MODES): assert ', '.join(names) in flat(sweep), names
    assert 'force-edu methods' in flat(demo) and 'force-edu methods' in flat(sweep)   # where the method names are listed
    assert '(default: True)' not in sweep and '(default: False)' not in sweep
    assert 'in [0, 1)' in flat(sweep) and '(0, 1)' not in sweep   # the help says what the error says

def test_methods_lists_the_registry():
    "`force-edu methods` lists the registry; the command line reads the package's names from its source, without torch."
    from force_edu.methods import METHODS
    from force_edu.options import package_methods
    assert package_methods() == tuple(METHODS)   # the static reading finds every registration, in order
    out = run('methods').stdout
    assert [l.split()[0] for l in out.splitlines()] == list(METHODS)

def _defaults(name): return vars(COMMANDS[name].parser(name).parse_args([]))
def _params(f): return {k: p.default for k, p in inspect.signature(f).parameters.items()}

def test_options_are_the_arguments_of_the_functions_they_run():
    "A parse of nothing gives the defaults of the function the subcommand runs: both are made from one declaration."
    from force_edu.sweep import sweep
    from force_edu.demo import run_demo
    from force_edu.options import SWEEP_COMMAND, DEMO_OPTIONS
    assert _defaults('sweep') == {k: v for k, v in _params(sweep).items() if SWEEP_COMMAND[k].cli}
    rd = _params(run_demo)
    assert _defaults('demo') == {k: rd[k] for k in _defaults('demo')}
    assert set(_defaults('demo')) == {n for n, o in DEMO_OPTIONS.items() if o.cli}

def test_sweep_parses_lists_and_flags():
    p = COMMANDS['sweep'].parser('sweep')
    a = vars(p.parse_args('--methods random snip --sparsities 0 0.9 --seeds 0 1 --no-dense --no-progress --n-train 100 --data digits'.split()))
    assert (a['methods'], a['sparsities'], a['seeds'], a['dense'], a['progress'], a['n_train']) == (
        ['random', 'snip'], [0.0, 0.9], [0, 1], False, False, 100)

def test_sweep_error_after_import_is_one_line(tmp_path):
    "What needs the data or the network (here: an architecture name) is checked by `Sweep`, still as one line, status 2."
    r = run('sweep', '--data', 'digits', '--arch', 'vgg99', '--out', str(tmp_path/'sw'), timeout=600, warnings=None)
    assert r.returncode == 2 and r.stdout == '', r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "unknown architecture 'vgg99'" in r.stderr, r.stderr
    assert not (tmp_path/'sw').exists()   # and no warning from torch or fastai: the error is the only line


def test_sweep_draws_no_bar_into_a_pipe(tmp_path):
    "Output that is not a terminal (a file, a pipe, CI's log) gets plain lines, no progress bars."
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([force_edu_cmd(), 'sweep', '--data', 'digits', '--arch', 'vgg', '--width', '8', '--methods', 'snip',
                        '--sparsities', '0.5', '--epochs', '1', '--n-train', '256', '--no-dense', '--out', str(tmp_path/'sw')],
                       capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'accuracy' in r.stdout and '█' not in r.stdout + r.stderr and '\r' not in r.stdout, r.stdout[:500]
