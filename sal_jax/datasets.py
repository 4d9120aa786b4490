"""The paper's seven datasets, from local files or tensorflow-datasets.

``load(name, data_dir)`` returns a ``Dataset`` of uint8 images and integer
labels, exactly as distributed (images H x W or H x W x C). Preprocessing to
[-1, 1] and flattening happen per batch (``preprocess``), so the uint8 arrays
can sit on the device whole.

Local formats, looked for in ``data_dir`` (or a sub-folder named as below):

| name          | files                                                       |
|---------------|-------------------------------------------------------------|
| any           | ``{name}.npz`` with x_train, y_train, x_test, y_test        |
| mnist         | train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], |
| fashion_mnist |   t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]  |
| cifar10       | cifar-10-batches-py/data_batch_1..5, test_batch             |
| svhn_cropped  | train_32x32.mat, test_32x32.mat                             |
| stl10         | stl10_binary/{train,test}_{X,y}.bin                         |
| pathmnist     | pathmnist.npz (as the medmnist package writes it)           |
| chestmnist    | chestmnist.npz (14 binary labels: multi-label)              |
| digits        | none: scikit-learn's 8x8 digits (0..16 scaled to 0..255),   |
|               |   the first 1,500 for training, the last 297 for testing    |
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import pathlib
import pickle
import zipfile
import jax
import jax.numpy as jnp
import numpy as np

from sal_jax import checks

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Spec:
  image_shape: tuple[int, ...]
  num_classes: int  # for multi-label sets: the number of binary labels
  multi_label: bool = False
  tfds_name: str | None = None
  how_to_get: str = ""


SPECS = {
    "mnist": Spec((28, 28), 10, tfds_name="mnist",
                  how_to_get="the four IDX files from "
                  "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": Spec((28, 28), 10, tfds_name="fashion_mnist",
                          how_to_get="the four IDX files from "
                          "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": Spec((32, 32, 3), 10, tfds_name="cifar10",
                    how_to_get="cifar-10-python.tar.gz from "
                    "https://www.cs.toronto.edu/~kriz/cifar.html, extracted"),
    "svhn_cropped": Spec((32, 32, 3), 10, tfds_name="svhn_cropped",
                         how_to_get="train_32x32.mat and test_32x32.mat from "
                         "http://ufldl.stanford.edu/housenumbers/"),
    "stl10": Spec((96, 96, 3), 10, tfds_name="stl10",
                  how_to_get="stl10_binary.tar.gz from "
                  "https://cs.stanford.edu/~acoates/stl10/, extracted"),
    "pathmnist": Spec((28, 28, 3), 9,
                      how_to_get="pathmnist.npz (pip install medmnist; "
                      "python -m medmnist download, or https://medmnist.com)"),
    "digits": Spec((8, 8), 10,
                   how_to_get="scikit-learn (pip install scikit-learn), "
                   "which ships these 1,797 images inside its package"),
    "chestmnist": Spec((28, 28), 14, multi_label=True,
                       how_to_get="chestmnist.npz (pip install medmnist; "
                       "python -m medmnist download, or https://medmnist.com)"),
}


class DatasetNotFoundError(FileNotFoundError):
  """No copy of the dataset where we looked; the message says how to get one."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test arrays as distributed: uint8 images, int32 labels.

  ``y_*`` is [N] for single-label sets and [N, num_classes] multi-hot for
  multi-label ones (ChestMNIST), whose accuracy is mean per-label accuracy.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  multi_label: bool
  source: str

  @property
  def input_dim(self) -> int:
    return int(np.prod(self.x_train.shape[1:]))


# --------------------------------------------------------------------------
# Readers for each distributed format. Each raises ValueError naming the file
# when its content is not what the format promises.


def _open_maybe_gz(path: pathlib.Path) -> bytes:
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        return f.read()
    return path.read_bytes()
  except (OSError, EOFError) as e:
    raise ValueError(f"{path}: cannot read ({e})") from e


def read_idx(path: pathlib.Path) -> np.ndarray:
  """An IDX file (MNIST's format): magic, dims, then big-endian data."""
  raw = _open_maybe_gz(path)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic)")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header")
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    raise ValueError(f"{path}: IDX header promises {expected} bytes for shape "
                     f"{shape}, file has {len(raw)} (truncated or corrupt)")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
  for candidate in (stem, stem + ".gz"):
    if (directory / candidate).exists():
      return directory / candidate
  return None


def _read_mnist_like(directory: pathlib.Path):
  names = {"x_train": "train-images-idx3-ubyte",
           "y_train": "train-labels-idx1-ubyte",
           "x_test": "t10k-images-idx3-ubyte",
           "y_test": "t10k-labels-idx1-ubyte"}
  paths = {k: _find(directory, v) for k, v in names.items()}
  if not all(paths.values()):
    return None
  arrays = {k: read_idx(p) for k, p in paths.items()}
  for split in ("train", "test"):
    if arrays[f"x_{split}"].shape[0] != arrays[f"y_{split}"].shape[0]:
      raise ValueError(f"{paths['x_' + split]} and {paths['y_' + split]}: "
                       "image and label counts differ")
  return arrays


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Admits what a CIFAR-10 batch holds (dicts, lists, bytes, strings,
  numbers, numpy arrays) and no other class or function: unpickling can
  call any importable function, so a crafted file could run code."""

  _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
              ("_codecs", "encode"),  # bytes, as Python 3 pickles them
              *((f"numpy.{core}.{module}", name)
                for core in ("core", "_core")
                for module, name in (("multiarray", "_reconstruct"),
                                     ("multiarray", "scalar"),
                                     ("numeric", "_frombuffer")))}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"refused to load {module}.{name}: a CIFAR-10 batch holds only "
          "dicts, lists, bytes, numbers and numpy arrays")
    return super().find_class(module, name)


def _unpickle(path: pathlib.Path) -> dict:
  try:
    with open(path, "rb") as f:
      batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
  except Exception as e:  # pickle raises many kinds on corrupt input
    raise ValueError(f"{path}: not a CIFAR-10 python batch ({e})") from e
  if not isinstance(batch, dict):
    raise ValueError(f"{path}: not a CIFAR-10 python batch (a "
                     f"{type(batch).__name__}, not a dict)")
  if any(getattr(v, "dtype", None) == np.dtype(object) for v in batch.values()):
    raise ValueError(f"{path}: not a CIFAR-10 python batch (an array of "
                     "Python objects)")
  return batch


def _read_cifar10(directory: pathlib.Path):
  folder = directory / "cifar-10-batches-py"
  files = [folder / f"data_batch_{i}" for i in range(1, 6)]
  if not all(f.exists() for f in files + [folder / "test_batch"]):
    return None

  def batches(paths):
    xs, ys = [], []
    for p in paths:
      d = _unpickle(p)
      data, labels = d.get(b"data"), d.get(b"labels")
      if data is None or labels is None or np.shape(data)[1:] != (3072,):
        raise ValueError(f"{p}: expected b'data' [N, 3072] and b'labels'")
      xs.append(np.asarray(data, np.uint8).reshape(-1, 3, 32, 32)
                .transpose(0, 2, 3, 1))
      ys.append(np.asarray(labels))
    return np.concatenate(xs), np.concatenate(ys)

  x_train, y_train = batches(files)
  x_test, y_test = batches([folder / "test_batch"])
  return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _read_svhn(directory: pathlib.Path):
  paths = [directory / "train_32x32.mat", directory / "test_32x32.mat"]
  if not all(p.exists() for p in paths):
    return None
  import scipy.io  # pylint: disable=g-import-not-at-top
  out = {}
  for split, p in zip(("train", "test"), paths):
    try:
      mat = scipy.io.loadmat(p)
    except Exception as e:  # scipy raises several kinds on corrupt files
      raise ValueError(f"{p}: not a readable SVHN .mat file ({e})") from e
    if "X" not in mat or "y" not in mat or mat["X"].shape[:3] != (32, 32, 3):
      raise ValueError(f"{p}: expected X [32, 32, 3, N] and y [N, 1]")
    out[f"x_{split}"] = np.transpose(mat["X"], (3, 0, 1, 2))
    y = mat["y"].reshape(-1).astype(np.int64)
    out[f"y_{split}"] = np.where(y == 10, 0, y)  # SVHN writes digit 0 as 10
  return out


def _read_stl10(directory: pathlib.Path):
  folder = directory / "stl10_binary"
  names = {f"{k.lower()}_{s}": folder / f"{s}_{k}.bin"
           for k in ("X", "y") for s in ("train", "test")}
  if not all(p.exists() for p in names.values()):
    return None
  out = {}
  for split in ("train", "test"):
    px, py = names[f"x_{split}"], names[f"y_{split}"]
    x = np.fromfile(px, np.uint8)
    if x.size % (3 * 96 * 96):
      raise ValueError(f"{px}: size {x.size} is not a multiple of 3*96*96 "
                       "(truncated or corrupt)")
    # Stored channel-major and column-major (MATLAB order).
    out[f"x_{split}"] = x.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    y = np.fromfile(py, np.uint8).astype(np.int64)
    if y.size != out[f"x_{split}"].shape[0]:
      raise ValueError(f"{py}: {y.size} labels for "
                       f"{out[f'x_{split}'].shape[0]} images")
    out[f"y_{split}"] = y - 1  # STL-10 labels are 1..10
  return out


def _require_zip(path: pathlib.Path) -> None:
  """An .npz is a zip archive; numpy takes anything else for a pickle."""
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not an .npz file (not a zip archive)")


def _read_npz(path: pathlib.Path, keys: dict[str, str]):
  _require_zip(path)
  try:
    with np.load(path) as f:
      files = f.files
      missing = [v for v in keys.values() if v not in files]
      if not missing:
        return {k: f[v] for k, v in keys.items()}
  except Exception as e:  # zipfile, zlib and numpy raise many kinds
    raise ValueError(f"{path}: not a readable .npz file ({e})") from e
  raise ValueError(f"{path}: missing arrays {missing}; has {files}")


_PLAIN_KEYS = {k: k for k in ("x_train", "y_train", "x_test", "y_test")}
_MEDMNIST_KEYS = {"x_train": "train_images", "y_train": "train_labels",
                  "x_test": "test_images", "y_test": "test_labels"}


def _expected_local_files(name: str) -> list[str]:
  native = {
      "mnist": ["train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]",
                "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]"],
      "cifar10": ["cifar-10-batches-py/data_batch_1..5",
                  "cifar-10-batches-py/test_batch"],
      "svhn_cropped": ["train_32x32.mat", "test_32x32.mat"],
      "stl10": ["stl10_binary/{train,test}_{X,y}.bin"],
  }
  native["fashion_mnist"] = native["mnist"]
  return [f"{name}.npz"] + native.get(name, [])


def _read_sklearn_digits():
  try:
    from sklearn import datasets as sk  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  digits = sk.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return dict(x_train=images[:1500], y_train=digits.target[:1500],
              x_test=images[1500:], y_test=digits.target[1500:])


def _read_local(name: str, directory: pathlib.Path):
  """Arrays from the first local format found in ``directory``, or None."""
  plain = directory / f"{name}.npz"
  if plain.exists():
    keys = _MEDMNIST_KEYS if name in ("pathmnist", "chestmnist") else None
    if keys is None:
      return _read_npz(plain, _PLAIN_KEYS), str(plain)
    _require_zip(plain)
    try:
      with np.load(plain) as f:
        is_plain = "x_train" in f.files
    except Exception as e:  # as in _read_npz
      raise ValueError(f"{plain}: not a readable .npz file ({e})") from e
    return _read_npz(plain, _PLAIN_KEYS if is_plain else keys), str(plain)
  reader = {"mnist": _read_mnist_like, "fashion_mnist": _read_mnist_like,
            "cifar10": _read_cifar10, "svhn_cropped": _read_svhn,
            "stl10": _read_stl10}.get(name)
  if reader is None:
    return None
  arrays = reader(directory)
  return (arrays, str(directory)) if arrays is not None else None


def _read_tfds(name: str, data_dir: str | None):
  """Whole splits from tensorflow-datasets, only if already prepared."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  tfds_name = SPECS[name].tfds_name
  if tfds_name is None:
    return None
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  have_tf = importlib.util.find_spec("tensorflow") is not None
  out = {}
  for split in ("train", "test"):
    if have_tf and builder.is_prepared():
      data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      images, labels = data["image"], data["label"]
    else:
      # Without tensorflow, only array_record data (or tfds' mocks) can be
      # read, through the random-access data source. download=False: an
      # offline download attempt would retry for minutes.
      try:
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                                  download=False)
      except Exception:  # tfds raises several kinds for "not prepared"
        return None
      rows = [source[i] for i in range(len(source))]
      images = np.stack([r["image"] for r in rows])
      labels = np.asarray([r["label"] for r in rows])
    out[f"x_{split}"], out[f"y_{split}"] = images, labels
  return out, f"tfds:{tfds_name}@{builder.data_dir}"


def _tfds_prepared(name: str, data_dir) -> bool:
  """Whether a tensorflow-datasets copy of ``name`` seems to be prepared
  (so ``auto`` asks tfds only then, and tfds warns of no missing folder)."""
  tfds_name = SPECS[name].tfds_name
  if tfds_name is None:
    return False
  root = pathlib.Path(data_dir or os.environ.get(
      "TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
  return any((root / tfds_name).glob("*/dataset_info.json"))


def _validate(name: str, arrays: dict, where: str) -> dict:
  spec = SPECS[name]
  fixed = {}
  for split in ("train", "test"):
    x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
    if len(spec.image_shape) == 2 and x.ndim == 4 and x.shape[-1] == 1:
      x = x[..., 0]  # tfds stores grayscale as H x W x 1
    if x.shape[1:] != spec.image_shape:
      raise ValueError(f"{where}: {name} x_{split} has image shape "
                       f"{x.shape[1:]}, expected {spec.image_shape}")
    if x.dtype != np.uint8:
      raise ValueError(f"{where}: {name} x_{split} has dtype {x.dtype}, "
                       "expected uint8")
    if spec.multi_label:
      if y.shape != (x.shape[0], spec.num_classes):
        raise ValueError(f"{where}: {name} y_{split} has shape {y.shape}, "
                         f"expected ({x.shape[0]}, {spec.num_classes})")
      if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{where}: {name} y_{split} must be 0/1 multi-hot")
    else:
      y = y.reshape(-1)
      if y.shape[0] != x.shape[0]:
        raise ValueError(f"{where}: {name} has {x.shape[0]} x_{split} images "
                         f"but {y.shape[0]} labels")
      if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
        raise ValueError(f"{where}: {name} y_{split} labels out of range "
                         f"[{y.min()}, {y.max()}], expected "
                         f"[0, {spec.num_classes - 1}]")
    fixed[f"x_{split}"], fixed[f"y_{split}"] = x, y.astype(np.int32)
  return fixed


def load(name: str, data_dir: str | os.PathLike | None = None,
         source: str = "auto") -> Dataset:
  """Loads a dataset by name.

  Args:
    name: one of ``SPECS``.
    data_dir: where to look. Local files may sit in it or in a sub-folder
      named ``name``; tensorflow-datasets uses it as its ``data_dir``.
    source: ``local``, ``tfds``, or ``auto`` (local files first, then an
      already prepared tensorflow-datasets copy). Nothing is ever downloaded.

  Returns:
    The dataset as distributed (uint8 images, int32 labels).

  Raises:
    ValueError: unknown name or source, or a file that is corrupt, truncated
      or holds the wrong shapes or labels (the message names the file).
    DatasetNotFoundError: no copy found; the message lists where it looked,
      which files it expected and how to get them.
  """
  if name not in SPECS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(SPECS)}")
  if source not in ("auto", "local", "tfds"):
    raise ValueError(f"unknown source {source!r}; expected auto, local or tfds")
  spec = SPECS[name]
  looked = []
  found = None
  if source in ("auto", "local") and data_dir is not None:
    for directory in (pathlib.Path(data_dir), pathlib.Path(data_dir) / name):
      looked.append(str(directory))
      found = _read_local(name, directory)
      if found:
        break
  if found is None and name == "digits" and source != "tfds":
    arrays = _read_sklearn_digits()
    looked.append("scikit-learn")
    found = (arrays, "sklearn.datasets.load_digits") if arrays else None
  if found is None and (source == "tfds" or (
      source == "auto" and _tfds_prepared(name, data_dir))):
    found = _read_tfds(name, None if data_dir is None else str(data_dir))
    looked.append(f"tensorflow-datasets data_dir={data_dir or '~/tensorflow_datasets'}")
  if found is None:
    tfds_hint = (f"; or prepare it with `tfds build {spec.tfds_name} "
                 f"--data_dir={data_dir or '~/tensorflow_datasets'}` on a "
                 "machine with internet" if spec.tfds_name else "")
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked in: {', '.join(looked) or 'nowhere (no data_dir given)'}. "
        f"Expected one of: {', '.join(_expected_local_files(name))}. "
        f"Get {spec.how_to_get}{tfds_hint}.")
  arrays, where = found
  arrays = _validate(name, arrays, where)
  return Dataset(name=name, num_classes=spec.num_classes,
                 multi_label=spec.multi_label, source=where, **arrays)


# --------------------------------------------------------------------------
# Batches.


def preprocess(images: Array, labels: Array) -> tuple[Array, Array]:
  """uint8 images -> flat float32 in [-1, 1]; multi-hot labels -> float32."""
  if images.dtype != jnp.uint8:
    raise ValueError(f"images must be uint8 (0-255, as datasets.load gives "
                     f"them), got dtype {images.dtype}")
  x = images.reshape(images.shape[0], -1).astype(jnp.float32)
  x = (x / 255.0 - 0.5) / 0.5
  y = labels.astype(jnp.float32) if labels.ndim == 2 else labels
  return x, y


def epoch_indices(key: Array, num_examples: int, batch_size: int) -> Array:
  """A shuffled epoch's example indices, [num_batches, batch_size].

  The permutation comes from ``key``; the last partial batch is dropped.
  Row ``i`` indexes the images and labels of step ``i``, in a Python loop
  (``step(state, (images[idx], labels[idx]))``) as in a scanned epoch.
  """
  checks.check_batch_size(batch_size)
  num_batches = num_examples // batch_size
  if num_batches == 0:
    raise ValueError(
        f"batch_size {batch_size} exceeds the {num_examples} examples")
  perm = jax.random.permutation(key, num_examples)
  return perm[:num_batches * batch_size].reshape(num_batches, batch_size)
