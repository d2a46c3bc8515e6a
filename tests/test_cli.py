"The `force-edu` console script, run as a user runs it: in a subprocess."
import json, os, shutil, subprocess, sys
from importlib.metadata import entry_points
from pathlib import Path
import pytest
from force_edu.cli import COMMANDS, main

def force_edu_cmd():
    "The installed console script beside this Python (the venv's), else the one on PATH."
    exe = Path(sys.executable).parent/'force-edu'
    exe = str(exe) if exe.exists() else shutil.which('force-edu')
    assert exe, 'no `force-edu` script: install the package with `pip install -e ".[dev]"`'
    return exe

def run(*args, timeout=300):
    return subprocess.run([force_edu_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})

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

def test_demo_writes_only_in_its_folder(tmp_path):
    "A short demo (1 epoch, 2 pruning steps) with the default `--out`: everything lands in the temporary folder it names."
    cwd, home, tmp = (tmp_path/n for n in ('cwd', 'home', 'tmp'))
    for d in (cwd, home, tmp): d.mkdir()
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'HOME': str(home), 'TMPDIR': str(tmp), 'OMP_NUM_THREADS': '1'}
    env.pop('FASTAI_HOME', None)
    r = subprocess.run([force_edu_cmd(), 'demo', '--epochs', '1', '--steps', '2', '--size', '16'], capture_output=True,
                       text=True, timeout=600, cwd=cwd, env=env, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    # libraries' own caches are not the demo's output: matplotlib's font cache in $HOME, torch's (empty) inductor folder in $TMPDIR
    lib_cache = lambda p: 'matplotlib' in p.parts or p.name in ('.cache', '.config') or p.name.startswith('torchinductor_')
    stray = [p for p in [*cwd.rglob('*'), *home.rglob('*')] if not lib_cache(p)]
    assert stray == [], stray
    made = [p for p in tmp.iterdir() if not lib_cache(p)]
    assert len(made) == 1 and made[0].is_dir() and str(made[0]) in r.stdout, (made, r.stdout)
    assert (made[0]/'demo_results.csv').exists()
    header = next(l for l in r.stdout.splitlines() if 'accuracy' in l and 'prune_s' in l)
    for col in ('sparsity', 'dead_layers', 'accuracy', 'prune_s', 'train_s'): assert col in header.split(), header
    table = r.stdout[r.stdout.index(header):]
    for name in ('force', 'random', 'dense'): assert f'\n{name} ' in table, table
