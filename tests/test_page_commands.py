"""Every `force-edu sweep` command a page keeps resumes from the committed records: its plan's run keys are all in the
results file it names, so re-running a page trains nothing.
This is what keeps a change of a default (or of `run_key`) from silently pointing a page's command at other runs."""
import json, re
from pathlib import Path
import pytest
from force_edu.cli import COMMANDS
from force_edu.options import SWEEP_OPTIONS, FASHION_MNIST_DIR
from force_edu.records import run_key, load_results

TUTORIALS = Path(__file__).parents[1]/'nbs'/'tutorials'

def _commands():
    "The command lines of each page's `...COMMANDS...` variables, as the page builds them (the cells that define them)."
    import pandas as pd, matplotlib.pyplot as plt
    for page in sorted(TUTORIALS.glob('*.ipynb')):
        ns = dict(Path=Path, pd=pd, plt=plt)
        for c in json.loads(page.read_text())['cells']:
            src = ''.join(c['source'])
            defines = re.search(r'^\w*COMMANDS\w* = ', src, re.M) and 'run_sweep_command' not in src
            if c['cell_type'] == 'code' and defines: exec(src, ns)
        for k, v in ns.items():
            if 'COMMANDS' not in k: continue
            for x in (v.values() if isinstance(v, dict) else v):   # a dict or a list of commands, or of lists of them
                for cmd in (x if isinstance(x, list) else [x]): yield page.name, cmd

@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason='the studies ran on Fashion-MNIST')
def test_every_page_command_resumes(monkeypatch):
    from force_edu.sweep import Sweep
    monkeypatch.chdir(TUTORIALS)
    cmds = list(_commands())
    assert len(cmds) >= 20, len(cmds)
    for page, cmd in cmds:
        args = vars(COMMANDS['sweep'].parser('sweep').parse_args(cmd.split()[2:]))
        sw = Sweep(**{k: v for k, v in args.items() if k in SWEEP_OPTIONS})
        done = {run_key(r) for r in load_results(sw.results_path)}
        missing = [r for r in sw.plan() if run_key(r) not in done]
        assert not missing, (page, cmd, len(missing))
