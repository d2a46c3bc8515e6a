"""The README cannot lie: every code block marked runnable is run, in a fresh Python, in an empty folder.

Convention: a line `<!-- runnable -->` (invisible on GitHub) directly before a ```python fence marks that block.
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

README = (ROOT/'README.md').read_text()
BLOCKS = runnable_blocks(README)

def test_parser():
    text = f"x\n{MARK}\n```python\nprint(1)\n```\n```python\nnot run\n```\n{MARK}\n``` python\na = 2\nprint(a)\n```\n"
    assert runnable_blocks(text) == ['print(1)\n', 'a = 2\nprint(a)\n']
    with pytest.raises(ValueError, match='must be followed'): runnable_blocks(f"{MARK}\n\n```python\nx\n```")
    with pytest.raises(ValueError, match='never closed'): runnable_blocks(f"{MARK}\n```python\nx\n")

def test_readme_has_runnable_blocks():
    assert len(BLOCKS) >= 1, f"no runnable block found in README.md (mark one with a {MARK} line before its ```python fence)"

@pytest.mark.parametrize('src', BLOCKS, ids=[f'block{i}' for i in range(len(BLOCKS))])
def test_readme_block_runs(src, tmp_path):
    r = subprocess.run([sys.executable, '-c', src], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"README block failed (exit {r.returncode}):\n{src}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"

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
