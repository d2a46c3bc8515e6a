"""Offline checks of the documentation site (Quarto cannot be installed here; the site is rendered by CI elsewhere).

- every notebook named in `nbs/sidebar.yml` exists, and every notebook is in the sidebar;
- nbdev's processing step (`proc_nbs`, what `nbdev-proc-nbs` runs before Quarto) runs clean;
- every `show_doc` target resolves in its notebook's module;
- no saved cell output contains a traceback;
- (internal links and their `#anchors` are checked by `test_site.py`, with Quarto's own rule for anchors).
"""
import os
import ast, json, re, importlib, warnings
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'


def _notebooks():
    return sorted(p for p in NBS.rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(NBS).parts))


def _sidebar_entries():
    side = yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    out = []
    def walk(items):
        for it in items:
            if isinstance(it, str): out.append(it)
            elif isinstance(it, dict):
                if 'href' in it: out.append(it['href'])
                walk(it.get('contents', []))
    walk(side)
    return out


def _cells(nb_path):
    return json.loads(nb_path.read_text())['cells']


def test_sidebar_matches_notebooks():
    entries = _sidebar_entries()
    missing = [e for e in entries if not (NBS / e).exists()]
    assert not missing, f"sidebar.yml names files that do not exist: {missing}"
    listed = {(NBS / e).resolve() for e in entries}
    unlisted = [str(p.relative_to(NBS)) for p in _notebooks() if p.resolve() not in listed]
    assert not unlisted, f"notebooks missing from nbs/sidebar.yml: {unlisted}"
    assert entries[0] == 'index.ipynb', "the home page comes first"


def test_no_traceback_in_outputs():
    bad = []
    for nb in _notebooks():
        for i, c in enumerate(_cells(nb)):
            for o in c.get('outputs', []):
                text = ''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', ''))
                if o.get('output_type') == 'error' or 'Traceback (most recent call last)' in text:
                    bad.append(f"{nb.relative_to(NBS)} cell {i}")
    assert not bad, f"saved outputs with a traceback: {bad}"


def _default_exp(cells):
    for c in cells:
        m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
        if m: return m.group(1)


def _show_doc_targets(cells):
    for c in cells:
        if c['cell_type'] != 'code': continue
        src = ''.join(l for l in ''.join(c['source']).splitlines(True) if not l.lstrip().startswith(('#|', '%', '!')))
        try: tree = ast.parse(src)
        except SyntaxError: continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'show_doc' and node.args:
                yield ast.unparse(node.args[0])


@pytest.mark.parametrize('nb', _notebooks(), ids=lambda p: str(p.relative_to(NBS)))
def test_show_doc_targets_resolve(nb):
    cells = _cells(nb)
    targets = list(_show_doc_targets(cells))
    if not targets: return
    mod = _default_exp(cells)
    assert mod, f"{nb.name} calls show_doc but exports no module"
    ns = vars(importlib.import_module(f'force_edu.{mod}')).copy()
    for t in targets:
        try: eval(t, ns)
        except Exception as e: pytest.fail(f"{nb.name}: show_doc({t}) does not resolve in force_edu.{mod}: {e!r}")


def _proc_nbs_warnings():
    "Run nbdev's docs processing and return the messages of the warnings it raised."
    from nbdev.serve import proc_nbs
    os.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        proc_nbs(path=str(NBS), n_workers=0, force=True)
    return [str(w.message) for w in caught]

def test_proc_nbs_runs_clean(tmp_path, monkeypatch):
    "nbdev's pre-Quarto processing (run by `nbdev-proc-nbs`; that command also tries to install Quarto, so call the step itself)."
    # in a forked process: the processing executes notebook cells (re-defining patched methods), which must not leak into later tests
    import multiprocessing as mp
    with mp.get_context('fork').Pool(1) as pool: messages = pool.apply(_proc_nbs_warnings)
    # nbdev runs every cell that mixes imports with other code while it builds the docs (to resolve `show_doc`):
    # a training cell written that way would train again on every docs build. Imports go in import-only cells.
    mixed = [m.split('---')[1].strip().splitlines()[:3] for m in messages if 'cells containing imports and other code' in m]
    assert not mixed, f"cells mixing imports with other code (split the imports into a cell of their own): {mixed}"
    proc = ROOT / '_proc'
    for nb in _notebooks():
        assert (proc / nb.relative_to(ROOT)).exists() or (proc / nb.relative_to(NBS)).exists(), f"{nb.name} was not processed"


@pytest.mark.parametrize('nb', _notebooks(), ids=lambda p: str(p.relative_to(NBS)))
def test_every_exported_symbol_has_show_doc(nb):
    "The reference: every public function and class a notebook exports (its module's `__all__`, constants aside) is documented there."
    cells = _cells(nb)
    mod = _default_exp(cells)
    if not mod: return
    names = getattr(importlib.import_module(f'force_edu.{mod}'), '__all__', [])
    shown = {t.split('.')[0] if t.split('.')[0] in names and '.' not in t else t for t in _show_doc_targets(cells)}
    missing = [n for n in names if not n.isupper() and n not in shown]
    assert not missing, f"{nb.name}: exported but no show_doc: {missing}"


def _modules():
    import force_edu, pkgutil
    return sorted(m.name for m in pkgutil.iter_modules(force_edu.__path__) if not m.name.startswith('_'))


def _undocumented_args(obj):
    "The arguments of `obj` (a function, or a class's `__init__`) without a docment, `self` and `*args`/`**kwargs` aside."
    import inspect
    from fastcore.docments import docments
    if inspect.isclass(obj):
        init = obj.__init__
        # an `__init__` inherited from outside the package (e.g. `nn.Module`'s) is not ours to document
        if not getattr(init, '__module__', '').startswith('force_edu'): return []
        sig = inspect.signature(init)
    else: sig = inspect.signature(obj)
    docs = docments(obj)
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [n for n, p in sig.parameters.items() if n != 'self' and p.kind not in skip and docs.get(n) is None]


@pytest.mark.parametrize('mod', _modules())
def test_exported_args_have_docments(mod):
    "Every argument of every public function and class (its `__init__`) in a module's `__all__` has a `# docment`."
    import inspect
    m = importlib.import_module(f'force_edu.{mod}')
    missing = {}
    for name in getattr(m, '__all__', []):
        obj = getattr(m, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue
        if not getattr(obj, '__module__', '').startswith('force_edu'): continue   # re-exported from elsewhere
        bad = _undocumented_args(obj)
        if bad: missing[f"{name}.__init__" if inspect.isclass(obj) else name] = bad
    assert not missing, (f"force_edu.{mod}: arguments without a docment (add `# comment` after each): "
                         + '; '.join(f"{k}({', '.join(v)})" for k, v in missing.items()))


@pytest.mark.parametrize('name', ['00_masks.ipynb', '01_sensitivity.ipynb'])
def test_lesson_one_cells_are_short(name):
    "The first lessons show the definitions in short cells: no exported cell over 60 lines (engineering lives elsewhere)."
    long = [(c.get('id'), n) for c in _cells(NBS/name) if c['cell_type'] == 'code'
            and ''.join(c['source']).lstrip().startswith('#| export') and (n := len(''.join(c['source']).splitlines())) > 60]
    assert not long, f"{name}: exported cells over 60 lines: {long}"
