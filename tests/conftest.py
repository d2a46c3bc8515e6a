"""One check for the whole test session: the tests leave nothing behind in the temporary folder.

Every test (and every subprocess it starts, through `TMPDIR`) gets a temporary folder of this session's own, so that
other programs writing to the system's temporary folder at the same time cannot make the check fail; at the end of the
session that folder must hold nothing but what libraries keep there: torch's inductor cache, and the standard library's
`multiprocessing` folder (`pymp-*`, made the first time a process needs one, e.g. for a Unix socket's address, and
removed by `multiprocessing` itself when that process exits, which for pytest's own process is after this check)."""
import os, shutil, tempfile
from pathlib import Path
import pytest

def _leftovers(folder:Path) -> list[str]:
    "What the tests left in `folder`, libraries' own caches aside."
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(('torchinductor_', 'pytest-of-', 'pymp-')))

@pytest.fixture(scope='session', autouse=True)
def temporary_folder_left_clean():
    folder = Path(tempfile.mkdtemp(prefix='force-edu-tests-'))
    old_env, old_tempdir = os.environ.get('TMPDIR'), tempfile.tempdir
    os.environ['TMPDIR'], tempfile.tempdir = str(folder), str(folder)
    try: yield folder
    finally:
        tempfile.tempdir = old_tempdir
        if old_env is None: os.environ.pop('TMPDIR', None)
        else: os.environ['TMPDIR'] = old_env
        left = _leftovers(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"the tests left these in the temporary folder: {left[:20]}"
