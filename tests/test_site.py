"""What CI can check of the documentation site without Quarto and without executing a notebook.

- no saved output of a notebook is an error or holds a traceback;
- no saved table (a `show_doc` table, or a table of fields built with `docments`) has a column that is "None" in every row;
- every intra-site link of a markdown cell or of the README points to a page that exists, and its `#anchor` to a heading of
  that page (Quarto's anchors: pandoc's auto-identifiers, or an explicit `{#id}`);
- nothing in the repository refers to files outside it.
"""
import json, re, subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
NOTEBOOKS = sorted(p for p in NBS.rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


def _cells(path):
    return json.loads(path.read_text(encoding='utf-8'))['cells']

def _src(cell): return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']

def _text(x): return ''.join(x) if isinstance(x, list) else (x or '')

def _rel(p): return p.relative_to(ROOT).as_posix()


# --- saved outputs ------------------------------------------------------------------------------------------------------

TRACEBACK = re.compile(r'Traceback \(most recent call last\)|^\w*(Error|Exception): ', re.M)

def _output_problems(path):
    for i, c in enumerate(_cells(path)):
        for o in c.get('outputs', []):
            t = o.get('output_type')
            if t == 'error':
                yield f"cell {i}: an error output ({o.get('ename')}: {o.get('evalue', '')[:80]})"
            elif t == 'stream' and o.get('name') == 'stderr' and 'Traceback (most recent call last)' in _text(o.get('text')):
                yield f"cell {i}: a traceback on stderr"
            elif t in ('execute_result', 'display_data'):
                d = o.get('data', {})
                for mime in ('text/plain', 'text/markdown'):
                    if 'Traceback (most recent call last)' in _text(d.get(mime)): yield f"cell {i}: a traceback in {mime}"

@pytest.mark.parametrize('path', NOTEBOOKS, ids=_rel)
def test_no_saved_error_or_traceback(path):
    problems = list(_output_problems(path))
    assert not problems, f"{_rel(path)}: " + '; '.join(problems)


class _Tables(HTMLParser):
    "Every HTML table as a list of rows: a header row (empty) first, then the rows that hold data cells (<td>), row labels included."
    def __init__(self):
        super().__init__(); self.tables, self._row, self._cell, self._has_td = [], None, None, False
    def handle_starttag(self, tag, attrs):
        if tag == 'table': self.tables.append([[]])
        elif tag == 'tr': self._row, self._has_td = [], False
        elif tag in ('td', 'th') and self._row is not None:
            self._cell = []; self._has_td |= tag == 'td'
    def handle_endtag(self, tag):
        if tag in ('td', 'th') and self._cell is not None and self._row is not None:
            self._row.append(''.join(self._cell).strip()); self._cell = None
        elif tag == 'tr' and self._row is not None:
            if self.tables and self._has_td: self.tables[-1].append(self._row)   # header rows (only <th>) are left out
            self._row = None
    def handle_data(self, data):
        if self._cell is not None: self._cell.append(data)

def _html_tables(html):
    p = _Tables(); p.feed(html)
    return p.tables

def _md_tables(md):
    "Markdown pipe tables as lists of rows (the header row first, the |---| line dropped)."
    tables, cur = [], []
    for line in md.splitlines() + ['']:
        if line.strip().startswith('|'):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not all(re.fullmatch(r':?-+:?', c) for c in cells if c): cur.append(cells)
        elif cur: tables.append(cur); cur = []
    return tables

def _none_columns(rows):
    "Indices of the columns (after the first, the name) that are 'None' in every data row of a table with at least 2 of them."
    body = [r for r in rows[1:] if len(r) > 1]
    if len(body) < 2: return []
    n = min(len(r) for r in body)
    return [j for j in range(1, n) if all(r[j] == 'None' for r in body)]

def _none_tables(path):
    for i, c in enumerate(_cells(path)):
        for o in c.get('outputs', []):
            d = o.get('data', {})
            tables = _html_tables(_text(d.get('text/html'))) + _md_tables(_text(d.get('text/markdown')))
            for rows in tables:
                if _none_columns(rows): yield f"cell {i}: a table with a column that is 'None' in every row (first rows: {rows[1:3]})"

def test_none_table_detector():
    html = ("<table><thead><tr><th></th><th>meaning</th></tr><tr><th>field</th><th></th></tr></thead>"
            "<tbody><tr><th>a</th><td>None</td></tr><tr><th>b</th><td>None</td></tr></tbody></table>")   # pandas' layout
    assert _none_columns(_html_tables(html)[0]) == [1]
    assert not _none_columns(_html_tables(html.replace('<td>None</td></tr></tbody>', '<td>a weight</td></tr></tbody>'))[0])
    assert _none_columns(_md_tables("|  | Type | Details |\n|--|--|--|\n| a | int | None |\n| b | str | None |")[0]) == [2]
    assert not _none_columns(_md_tables("| | Details |\n|--|--|\n| a | the first |\n| b | None |")[0])

@pytest.mark.parametrize('path', NOTEBOOKS, ids=_rel)
def test_no_saved_table_of_none(path):
    problems = list(_none_tables(path))
    assert not problems, f"{_rel(path)}: " + '; '.join(problems)


# --- links and anchors --------------------------------------------------------------------------------------------------

def anchor_of(heading):
    "Pandoc's auto-identifier of a heading (Quarto's rule): formatting dropped, lowercase, spaces to '-', only letters, digits, '_', '-' and '.' kept, leading non-letters dropped."
    s = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)   # a link: its text
    s = re.sub(r'[`*$]', '', s)                            # code, emphasis and math markers: their content stays
    s = re.sub(r'\s+', '-', s.strip().lower())
    s = ''.join(ch for ch in s if ch.isalnum() or ch in '_-.')
    s = re.sub(r'^[^a-z]+', '', s)
    return s or 'section'

def test_anchor_rule():
    "The rule the repository's links are written with."
    assert anchor_of('Which BatchNorm mode? A measurement') == 'which-batchnorm-mode-a-measurement'
    assert anchor_of('Remaining weights per layer (Fig. 7)') == 'remaining-weights-per-layer-fig.-7'
    assert anchor_of('The learner side: `pruning_masks`, `remove_pruning`, `load`') == 'the-learner-side-pruning_masks-remove_pruning-load'
    assert anchor_of('The experiment: FORCE, random and dense at 99% sparsity') == 'the-experiment-force-random-and-dense-at-99-sparsity'

HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*$', re.M)
EXPLICIT = re.compile(r'\{#([\w.:-]+)[^}]*\}\s*$')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)

def anchors(path):
    "Every anchor a page has: its headings' identifiers (explicit or automatic, duplicates numbered), and explicit ids."
    seen, out = {}, set()
    for c in _cells(path):
        src = _src(c)
        if c['cell_type'] != 'markdown': continue
        src = FENCE.sub('', src)
        for m in HEADING.finditer(src):
            text = m.group(2)
            e = EXPLICIT.search(text)
            if e: out.add(e.group(1)); continue
            a = anchor_of(text)
            n = seen.get(a, 0); seen[a] = n + 1
            out.add(a if n == 0 else f'{a}-{n}')
        out.update(re.findall(r'\{#([\w.:-]+)', src))                              # spans and divs with an id
        out.update(re.findall(r'<a\s+(?:id|name)="([^"]+)"', src))
    return out

LINK = re.compile(r'\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)|href="([^"]+)"')

def _links(text):
    text = FENCE.sub('', text)
    text = re.sub(r'`[^`\n]*`', '', text)   # inline code is not a link
    for m in LINK.finditer(text): yield m.group(1) or m.group(2)

def _page_for(base:Path, target:str):
    "The notebook (or file) a relative link points to, or None."
    p = (base / target).resolve()
    if p.suffix == '.html':
        # nbdev names a page after its notebook without the number prefix: 01_sensitivity.ipynb -> sensitivity.html
        for cand in p.parent.glob('*.ipynb'):
            if re.sub(r'^\d+[a-z]?_', '', cand.stem) == p.stem or cand.stem == p.stem: return cand
        for ext in ('.qmd', '.md'):
            if p.with_suffix(ext).exists(): return p.with_suffix(ext)
        return None
    return p if p.exists() else None

def _sources():
    for nb in NOTEBOOKS:
        yield nb, '\n'.join(_src(c) for c in _cells(nb) if c['cell_type'] == 'markdown')
    for md in [ROOT / 'README.md'] + sorted(NBS.rglob('*.md')) + sorted(NBS.rglob('*.qmd')):
        if md.exists(): yield md, md.read_text(encoding='utf-8')

def broken_links(sources=None):
    out, cache = [], {}
    for page, text in (_sources() if sources is None else sources):
        for link in _links(text):
            if re.match(r'^[a-z][a-z0-9+.-]*:', link, re.I) or link.startswith('//'): continue   # http:, mailto:, ...
            if link.startswith('/'): out.append((page, link, 'an absolute path')); continue
            target, _, anchor = link.partition('#')
            dest = page if not target else _page_for(page.parent, target)
            if dest is None: out.append((page, link, 'no such page')); continue
            if target.endswith('.html') and dest.suffix == '.ipynb':   # works on the site only, not on GitHub or in Jupyter
                out.append((page, link, f'a site-only name: link {dest.name}, the notebook')); continue
            if anchor and dest.suffix == '.ipynb':
                if dest not in cache: cache[dest] = anchors(dest)
                if anchor not in cache[dest]: out.append((page, link, f'no heading with this anchor in {_rel(dest)}'))
    return out

def _fmt(bad): return '\n'.join(f'  {_rel(p)}: {l} ({why})' for p, l, why in bad)

def test_links_resolve():
    bad = broken_links()
    assert not bad, 'broken links:\n' + _fmt(bad)

def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / '01_a.ipynb').write_text(json.dumps({'cells': [{'cell_type': 'markdown', 'source': ['## Fig. 7: the layers\n', '### Kept {#kept}']}]}))
    assert anchors(tmp_path / '01_a.ipynb') == {'fig.-7-the-layers', 'kept'}
    assert _page_for(tmp_path, 'a.html') == tmp_path / '01_a.ipynb'
    assert _page_for(tmp_path, '01_a.ipynb') == tmp_path / '01_a.ipynb'
    assert _page_for(tmp_path, 'b.html') is None
    assert list(_links('see [x](01_a.ipynb#kept), `[not](a link)` and <a href="a.html">y</a>')) == ['01_a.ipynb#kept', 'a.html']
    page = tmp_path / '02_b.ipynb'   # a link to a site page (nbdev's name for 01_a.ipynb) works on the site only
    assert [(l, why.split(':')[0]) for _, l, why in broken_links([(page, 'see [a](a.html) and [a](01_a.ipynb)')])] == [('a.html', 'a site-only name')]


# --- the repository stands alone ----------------------------------------------------------------------------------------

OUTSIDE = ('../' + 'shared', '/work/' + 'shared', 'DESIGN' + '.md')   # written in pieces, so that this file does not match

def test_no_reference_outside_the_repository():
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for f in files:
        p = ROOT / f
        if not p.is_file() or p.stat().st_size > 5_000_000: continue
        try: text = p.read_text(encoding='utf-8')
        except (UnicodeDecodeError, OSError): continue
        hits += [f'{f}: {s}' for s in OUTSIDE if s in text]
    assert not hits, 'references to files outside the repository:\n' + '\n'.join(hits)


# --- saved outputs say nothing about the machine that made them ------------------------------------------------------

MACHINE_PATH = re.compile(r"/root/|/home/[\w.-]+/|/Users/[\w.-]+/|[A-Z]:\\\\Users|/tmp/[\w.-]+|site-packages|/\.pyenv/|/work/")

def machine_paths(text:str) -> list[str]:
    "Paths in `text` that belong to one machine: home folders, temporary folders, a Python installation."
    return [m.group(0) for m in MACHINE_PATH.finditer(text)]

def _output_text(o):
    data = o.get('data', {})
    return ''.join(o.get('text', '')) + ''.join(data.get('text/plain', '')) + ''.join(data.get('text/markdown', '')) + \
           ''.join(data.get('text/html', '')) + ''.join(o.get('traceback', []))

@pytest.mark.parametrize('path', NOTEBOOKS, ids=_rel)
def test_no_machine_specific_path_in_outputs(path):
    "A saved output shows what a reader gets, not where the author's files were: relative paths, `~`, placeholders."
    hits = [f"{c.get('id')}: {p}" for c in _cells(path) if c['cell_type'] == 'code'
            for o in c.get('outputs', []) for p in machine_paths(_output_text(o))]
    assert not hits, f"{_rel(path)}: machine-specific paths in saved outputs: " + '; '.join(sorted(set(hits))[:10])

def test_machine_path_detector():
    assert machine_paths('writing to /tmp/force_edu_callback_s3yr3j07/demo') == ['/tmp/force_edu_callback_s3yr3j07']
    assert machine_paths('/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/torch/jit/_script.py') != []
    assert machine_paths("'where': '~/.fastai/data/cifar10'") == []
    assert machine_paths('/usr/share/datasets/fashion-mnist') == []   # where Debian installs the data set, on every machine


# --- the notebooks leave nothing behind in the temporary folder ---------------------------------------------------------

def unremoved_temporary_folders(code:str) -> list[str]:
    "Temporary folders made in `code` and never removed: `mkdtemp()` without `shutil.rmtree`, `TemporaryDirectory()` without `.cleanup()`."
    made = re.findall(r'(\w+)\s*=\s*(?:Path\()?tempfile\.mkdtemp\(', code)
    kept = re.findall(r'(\w+)\s*=\s*tempfile\.TemporaryDirectory\(', code)   # nbdev-test's workers may exit before its finalizer runs
    return ([v for v in made if not re.search(rf'shutil\.rmtree\(\s*{v}\b', code)] +
            [v for v in kept if not re.search(rf'\b{v}\.cleanup\(\)', code)])

@pytest.mark.parametrize('path', NOTEBOOKS, ids=_rel)
def test_notebooks_remove_their_temporary_folders(path):
    code = '\n'.join(_src(c) for c in _cells(path) if c['cell_type'] == 'code')
    left = unremoved_temporary_folders(code)
    assert not left, f"{_rel(path)}: tempfile.mkdtemp() folders never removed: {left} (remove them at the end of the page)"

def test_temporary_folder_detector():
    assert unremoved_temporary_folders("tmp = Path(tempfile.mkdtemp(prefix='x'))\nprint(tmp)") == ['tmp']
    assert unremoved_temporary_folders("d = tempfile.mkdtemp()\nshutil.rmtree(d)") == []
    assert unremoved_temporary_folders("_s = tempfile.TemporaryDirectory()\ntmp = Path(_s.name)") == ['_s']
    assert unremoved_temporary_folders("_s = tempfile.TemporaryDirectory()\ntmp = Path(_s.name)\n_s.cleanup()") == []
    assert unremoved_temporary_folders("with tempfile.TemporaryDirectory() as d: pass") == []
