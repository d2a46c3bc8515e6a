"""The README cannot lie: every code block marked runnable is run, in a fresh Python, in an empty folder.

Convention: a line `<!-- runnable -->` (invisible on GitHub) directly before a ```python fence marks that block. The
first plain ``` block after it (before the next runnable block or heading) is the output it prints: the test compares
it with the block's stdout line by line, `...` in a line standing for any text (a time, a temporary folder).
"""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = '<!-- runnable -->'

def runnable_blocks(text:str) -> list[str]:
    "Source of each ```python block whose fence is on the line right after a `<!-- runnable -->` line."
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            fence = lines[i+1].strip() if i + 1 < len(lines) else ''
            if not re.fullmatch(r'```\s*python\b.*', fence):
                raise ValueError(f"README line {i+1}: {MARK} must be followed directly by a ```python fence, got {fence!r}")
            end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == '```'), None)
            if end is None: raise ValueError(f"README line {i+2}: runnable block is never closed with ```")
            blocks.append('\n'.join(lines[i+2:end]) + '\n')
            i = end
        i += 1
    return blocks

def expected_outputs(text:str) -> list[str|None]:
    "For each runnable block, the plain ``` block that follows it (its printed output), or None if there is none."
    lines, outs, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == '```')
            out, j = None, end + 1
            while j < len(lines) and lines[j].strip() != MARK and not lines[j].startswith('#'):
                if lines[j].strip() == '```':
                    close = next(k for k in range(j + 1, len(lines)) if lines[k].strip() == '```')
                    out = '\n'.join(lines[j+1:close]) + '\n'
                    break
                if lines[j].strip().startswith('```'): break   # another fenced block (bash, python) comes first
                j += 1
            outs.append(out)
            i = end
        i += 1
    return outs

def output_matches(expected:str, actual:str) -> bool:
    "Whether `actual` prints the lines of `expected` (trailing blanks and blank lines ignored; `...` matches any text)."
    norm = lambda t: [l.rstrip() for l in t.strip('\n').splitlines()]
    exp, act = norm(expected), norm(actual)
    pat = lambda l: re.compile('.*'.join(map(re.escape, l.split('...'))) + r'\Z')
    return len(exp) == len(act) and all(pat(e).match(a) for e, a in zip(exp, act))

README = (ROOT/'README.md').read_text()
BLOCKS = runnable_blocks(README)
OUTPUTS = expected_outputs(README)

def test_parser():
    text = f"x\n{MARK}\n```python\nprint(1)\n```\n```python\nnot run\n```\n{MARK}\n``` python\na = 2\nprint(a)\n```\n"
    assert runnable_blocks(text) == ['print(1)\n', 'a = 2\nprint(a)\n']
    with pytest.raises(ValueError, match='must be followed'): runnable_blocks(f"{MARK}\n\n```python\nx\n```")
    with pytest.raises(ValueError, match='never closed'): runnable_blocks(f"{MARK}\n```python\nx\n")

def test_expected_outputs_parser():
    text = (f"{MARK}\n```python\nprint(1)\n```\n\nIt prints:\n\n```\n1\n```\n{MARK}\n```python\nx = 1\n```\n## Next\n```\nnot it\n```\n")
    assert expected_outputs(text) == ['1\n', None]
    assert output_matches('in ... s\nok', 'in 3.2 s  \nok\n') and not output_matches('in ... s', 'in 3.2 s\nmore')
    assert not output_matches('accuracy 0.972', 'accuracy 0.838')

def test_readme_has_runnable_blocks():
    assert len(BLOCKS) >= 1, f"no runnable block found in README.md (mark one with a {MARK} line before its ```python fence)"

def test_every_runnable_block_states_its_output():
    assert all(o is not None for o in OUTPUTS), "a runnable README block has no ``` block with the output it prints after it"

@pytest.mark.parametrize('src, expected', list(zip(BLOCKS, OUTPUTS)), ids=[f'block{i}' for i in range(len(BLOCKS))])
def test_readme_block_runs(src, expected, tmp_path):
    "Each runnable block runs as a reader runs it (a fresh Python, the environment's thread settings) and prints what the README says."
    r = subprocess.run([sys.executable, '-c', src], cwd=tmp_path, capture_output=True, timeout=1800, stdin=subprocess.DEVNULL)
    r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()   # bytes first: text mode would turn a bar's \r into \n
    assert r.returncode == 0, f"README block failed (exit {r.returncode}):\n{src}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    if expected is None: return
    # a progress bar redraws its line with \r: what is left after the last \r is what a terminal shows at the end
    shown = '\n'.join(l.rsplit('\r', 1)[-1] for l in r.stdout.split('\n'))
    assert output_matches(expected, shown), f"README block printed:\n{r.stdout!r}\n--- the README says:\n{expected}"
    assert shown == r.stdout, f"a bar was drawn inside learn.no_bar(): stdout holds {r.stdout.count(chr(13))} carriage returns"

def _code_lines(src): return [l.rstrip() for l in src.splitlines() if l.strip()]

def test_index_notebook_has_the_same_runnable_code():
    """nbs/index.ipynb (the docs home page) and README.md are kept in sync by hand: the runnable code must be in both.
    The notebook may split a block over consecutive code cells (imports in a cell of their own, as nbdev's docs need)."""
    cells = json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells']
    nb_lines = [l for c in cells if c['cell_type'] == 'code' for l in _code_lines(''.join(c['source']))]
    for src in BLOCKS:
        want = _code_lines(src)
        found = any(nb_lines[i:i + len(want)] == want for i in range(len(nb_lines) - len(want) + 1))
        assert found, f"README block not found, line for line, in consecutive code cells of nbs/index.ipynb:\n{src}"

def test_readme_measurements_are_the_index_ones():
    """README.md's "What the package measured" is nbs/index.ipynb's, word for word (links rewritten from nbs/ to the
    repository root): the index pins every number of that section to the committed records with hidden asserts, so the
    README's numbers are pinned too, and a re-run that changes one fails `nbdev-test` before the README can go stale."""
    cells = json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells']
    head = '## What the package measured'
    src = [''.join(c['source']) for c in cells if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith(head)]
    assert len(src) == 1, f"nbs/index.ipynb has {len(src)} markdown cells starting {head!r}"
    want = re.sub(r'\]\((?!https?:|#)', '](nbs/', src[0]).strip()
    readme = README
    i = readme.index(head)
    got = readme[i:readme.index('\n## ', i + len(head))].strip()
    assert got == want, "README.md's measured section differs from nbs/index.ipynb's: copy the index's cell (links with nbs/)"
