"Tests of `force_edu.data` that go beyond the notebook's: bad input, damaged files, fixed splits."
import gzip
import numpy as np, pytest, torch
from pathlib import Path
from force_edu.data import (digits_dls, idx_dls, cifar_dls, read_idx, write_idx, load_idx, seeded_split,
                            available_datasets, pixel_stats, DIGIT_CLASSES, FASHION_CLASSES, FASHION_MNIST_PATH)

APT = 'apt-get install dataset-fashion-mnist'

@pytest.fixture(scope='module')
def digits():
    return digits_dls(size=16, bs=32)

def make_idx_folder(d, n_train=20, n_test=10, gz=True):
    "A tiny MNIST-layout folder of random images (a test of the code path, not data)."
    rng = np.random.default_rng(0)
    ext = '.gz' if gz else ''
    for split, n in [('train', n_train), ('t10k', n_test)]:
        write_idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), Path(d)/f'{split}-images-idx3-ubyte{ext}')
        write_idx((np.arange(n) % 10).astype(np.uint8), Path(d)/f'{split}-labels-idx1-ubyte{ext}')
    return Path(d)

# --- digits -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('valid_pct', [0, 1, -0.1, 1.5])
def test_digits_valid_pct_outside_0_1(valid_pct):
    with pytest.raises(ValueError, match='valid_pct') as e: digits_dls(valid_pct=valid_pct)
    assert len(str(e.value).splitlines()) == 1

def test_digits_batches(digits):
    x, y = digits.one_batch()
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert y.shape == (32,) and int(y.max()) < 10
    assert list(digits.vocab) == DIGIT_CLASSES
    assert len(digits.train_ds) + len(digits.valid_ds) == 1797

def test_digits_split_fixed_and_disjoint(digits):
    trn, val = digits.splits
    assert set(trn).isdisjoint(val) and sorted(list(trn) + list(val)) == list(range(1797))
    again = digits_dls(size=8, bs=16, channels=1)        # other sizes, same seed: same split
    assert [list(s) for s in again.splits] == [list(s) for s in digits.splits]
    assert [list(s) for s in digits_dls(seed=1).splits] != [list(s) for s in digits.splits]

def test_digits_do_not_touch_global_rng():
    torch.manual_seed(123); a = torch.rand(3)
    torch.manual_seed(123); digits_dls(size=8); b = torch.rand(3)
    assert torch.equal(a, b)

def test_digits_train_step_and_export(digits, tmp_path):
    from fastai.vision.all import vision_learner, resnet18, accuracy, load_learner
    learn = vision_learner(digits, resnet18, pretrained=False, metrics=accuracy, path=tmp_path)
    x, y = digits.one_batch()
    loss = learn.loss_func(learn.model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    learn.export('digits.pkl')
    learn2 = load_learner(tmp_path/'digits.pkl')
    with learn2.no_bar(): pred = learn2.predict(digits.valid_ds.items[0][0])
    assert pred[0] in DIGIT_CLASSES

def test_bad_channels():
    with pytest.raises(ValueError, match='channels'): digits_dls(channels=2)

def test_seeded_split_sizes():
    trn, val = seeded_split(100, 0.25, seed=3)
    assert (len(trn), len(val)) == (75, 25) and set(trn).isdisjoint(val)
    assert seeded_split(3, 0.01) == seeded_split(3, 0.01) and len(seeded_split(3, 0.01)[1]) == 1

def test_pixel_stats():
    a = np.array([0, 0, 255, 255], dtype=np.uint8)
    assert np.allclose(pixel_stats(a), (0.5, 0.5))

# --- IDX ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize('name', ['x-idx3-ubyte', 'x-idx3-ubyte.gz'])
def test_idx_round_trip(tmp_path, dtype, name):
    a = (np.arange(2*3*5) - 7).astype(dtype).reshape(2, 3, 5)
    b = read_idx(write_idx(a, tmp_path/name))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)

def test_idx_header_bytes(tmp_path):
    raw = (write_idx(np.zeros((60000, 28, 28), np.uint8)[:2], tmp_path/'h')).read_bytes()
    assert raw[:12].hex() == '00000803' '00000002' '0000001c'

def test_truncated_idx_file(tmp_path):
    f = write_idx(np.arange(100, dtype=np.uint8).reshape(4, 25), tmp_path/'t-idx2-ubyte')
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(ValueError, match='truncated') as e: read_idx(f)
    assert 't-idx2-ubyte' in str(e.value)

def test_truncated_gzip(tmp_path):
    f = tmp_path/'t-idx1-ubyte.gz'
    f.write_bytes(gzip.compress(b'\x00\x00\x08\x01\x00\x00\x00\x05' + bytes(5))[:-6])
    with pytest.raises(ValueError, match='t-idx1-ubyte.gz'): read_idx(f)

def test_not_idx(tmp_path):
    (tmp_path/'junk').write_bytes(b'PK\x03\x04 zip file')
    with pytest.raises(ValueError, match='not an IDX file'): read_idx(tmp_path/'junk')
    (tmp_path/'empty').write_bytes(b'')
    with pytest.raises(ValueError, match='not an IDX file'): read_idx(tmp_path/'empty')

def test_idx_dls_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e: idx_dls(tmp_path/'no-such-folder')
    assert 'no-such-folder' in str(e.value) and APT in str(e.value)
    assert len(str(e.value).splitlines()) == 1, 'the error is one line'

def test_idx_dls_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e: idx_dls(tmp_path)
    assert 'train-images-idx3-ubyte' in str(e.value) and APT in str(e.value)

def test_idx_dls_missing_one_file(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path/'t10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(FileNotFoundError) as e: idx_dls(tmp_path)
    assert 't10k-labels-idx1-ubyte' in str(e.value) and APT in str(e.value)

def test_idx_dls_truncated_file(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    f = tmp_path/'t10k-images-idx3-ubyte'
    f.write_bytes(f.read_bytes()[:-28])
    with pytest.raises(ValueError) as e: idx_dls(tmp_path)
    assert 't10k-images-idx3-ubyte' in str(e.value) and APT in str(e.value)

def test_idx_dls_label_count_mismatch(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(np.zeros(7, np.uint8), tmp_path/'train-labels-idx1-ubyte.gz')
    with pytest.raises(ValueError, match='do not match'): idx_dls(tmp_path)

def test_idx_dls_small_folder(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    dls = idx_dls(tmp_path, bs=5)
    assert list(dls.vocab) == DIGIT_CLASSES
    assert (len(dls.train_ds), len(dls.valid_ds)) == (20, 10)
    assert dls.one_batch()[0].shape == (5, 1, 28, 28)
    dls = idx_dls(tmp_path, bs=4, valid=0.25, n_train=8, size=32, channels=3)
    assert (len(dls.train_ds), len(dls.valid_ds)) == (8, 5)
    assert dls.one_batch()[0].shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="valid='test'"): idx_dls(tmp_path, valid='train')

def test_idx_dls_subset_is_seeded(tmp_path):
    make_idx_folder(tmp_path, n_train=50)
    a, b = idx_dls(tmp_path, n_train=10, bs=2), idx_dls(tmp_path, n_train=10, bs=2)
    xa = np.stack([np.asarray(i[0]) for i in a.train_ds.items])
    xb = np.stack([np.asarray(i[0]) for i in b.train_ds.items])
    assert np.array_equal(xa, xb)

@pytest.mark.skipif(not FASHION_MNIST_PATH.is_dir(), reason=f'Fashion-MNIST not installed: sudo {APT}')
def test_fashion_mnist():
    d = load_idx()
    assert d['train_images'].shape == (60000, 28, 28) and d['test_images'].shape == (10000, 28, 28)
    assert sorted(np.unique(d['train_labels'])) == list(range(10))
    dls = idx_dls(n_train=1000, n_valid=200, bs=50)
    assert list(dls.vocab) == FASHION_CLASSES
    assert (len(dls.train_ds), len(dls.valid_ds)) == (1000, 200)
    assert dls.one_batch()[0].shape == (50, 1, 28, 28)

# --- CIFAR layout ---------------------------------------------------------------------------------------------

def test_cifar_dls_tiny_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in [('train', 3), ('test', 2)]:
        for cls in ['airplane', 'truck']:
            (tmp_path/split/cls).mkdir(parents=True)
            for i in range(n): Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path/split/cls/f'{i}.png')
    dls = cifar_dls(tmp_path, bs=2)
    assert list(dls.vocab) == ['airplane', 'truck']
    assert (len(dls.train_ds), len(dls.valid_ds)) == (6, 4)
    assert dls.one_batch()[0].shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match=r'untar_data\(URLs.CIFAR\)'): cifar_dls(tmp_path/'nope')

# --- what is available ----------------------------------------------------------------------------------------

def test_available_datasets(tmp_path):
    a = available_datasets()
    assert a['digits']['available'] and a['digits']['load'] == 'digits_dls()'
    assert a['fashion-mnist']['available'] == FASHION_MNIST_PATH.is_dir()
    missing = available_datasets(tmp_path/'none')['fashion-mnist']
    assert not missing['available'] and APT in missing['install']
    present = available_datasets(make_idx_folder(tmp_path))['fashion-mnist']
    assert present['available'] and present['load'] == f"idx_dls({str(tmp_path)!r})"

# --- install command and import ---------------------------------------------------------------------------------

def test_install_command_works_as_root_and_as_a_user():
    "`sudo` only for a user who is not root: a root shell (a container, CI) often has no sudo."
    import os
    from force_edu.data import FASHION_MNIST_APT
    assert FASHION_MNIST_APT == ('sudo ' if os.geteuid() != 0 else '') + APT

def test_import_prints_no_dependency_warning():
    "Importing `force_edu.data` first (before fastai) shows none of the warnings torch raises about fastai's import."
    import subprocess, sys, os
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    r = subprocess.run([sys.executable, '-c', 'import force_edu.data'], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and 'torch.jit.script' not in r.stderr, r.stderr
