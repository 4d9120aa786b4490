"""Loaders read every distributed format exactly, and fail with clear errors.

Each test writes a few images in the dataset's real on-disk format.
"""

import gzip
import os
import pathlib
import pickle

import jax
import numpy as np
import pytest

import sal_jax as sj
from sal_jax import datasets

SHARED = pathlib.Path(__file__).parents[1] / "../shared/datasets"


def _images(rng, n, shape):
  return rng.integers(0, 256, (n,) + shape, dtype=np.uint8)


def _write_idx(path, array, gz):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  if gz:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)


def _split(rng, shape, classes, n_train=6, n_test=3):
  return dict(x_train=_images(rng, n_train, shape),
              y_train=rng.integers(0, classes, n_train),
              x_test=_images(rng, n_test, shape),
              y_test=rng.integers(0, classes, n_test))


def _assert_loaded(ds, expected):
  for k, v in expected.items():
    np.testing.assert_array_equal(getattr(ds, k), v, err_msg=k)
  assert ds.y_train.dtype == np.int32 and ds.x_train.dtype == np.uint8


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_raw_or_gzipped_load_exactly(tmp_path, rng, name, gz):
  expected = _split(rng, (28, 28), 10)
  stems = {"x_train": "train-images-idx3-ubyte",
           "y_train": "train-labels-idx1-ubyte",
           "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
  for k, stem in stems.items():
    _write_idx(tmp_path / stem, expected[k], gz)
  _assert_loaded(datasets.load(name, tmp_path), expected)


_CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, 5])
def test_cifar10_python_batches_load_exactly(tmp_path, rng, protocol):
  folder = tmp_path / "cifar10" / "cifar-10-batches-py"  # sub-folder by name
  folder.mkdir(parents=True)
  xs, ys = [], []
  for name in _CIFAR_BATCHES:
    x = _images(rng, 2, (32, 32, 3))
    y = list(rng.integers(0, 10, 2))
    data = x.transpose(0, 3, 1, 2).reshape(2, 3072)  # R plane, G, B
    with open(folder / name, "wb") as f:
      pickle.dump({b"batch_label": b"batch", b"data": data, b"labels": y,
                   b"filenames": [b"a.png", b"b.png"]}, f, protocol=protocol)
    xs.append(x)
    ys.append(y)
  ds = datasets.load("cifar10", tmp_path)
  _assert_loaded(ds, dict(x_train=np.concatenate(xs[:5]),
                          y_train=np.concatenate(ys[:5]),
                          x_test=xs[5], y_test=ys[5]))


class _RunsACommand:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_cifar10_batch_that_would_run_code_is_refused_naming_it(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  marker = tmp_path / "the_command_ran"
  for name in _CIFAR_BATCHES:
    with open(folder / name, "wb") as f:
      pickle.dump({b"data": _RunsACommand(marker), b"labels": [0]}, f)
  with pytest.raises(ValueError, match=f"{folder / 'data_batch_1'}: not a "
                     "CIFAR-10 python batch \\(refused to load "
                     "(posix|os).system"):
    datasets.load("cifar10", tmp_path)
  assert not marker.exists()


def test_an_npz_holding_pickled_objects_is_refused_unread(tmp_path):
  objects = np.empty(1, object)
  objects[0] = _RunsACommand(tmp_path / "the_command_ran")
  np.savez(tmp_path / "mnist.npz", x_train=objects, y_train=objects,
           x_test=objects, y_test=objects)
  with pytest.raises(ValueError, match="Object arrays cannot be loaded"):
    datasets.load("mnist", tmp_path)
  assert not (tmp_path / "the_command_ran").exists()


def test_svhn_mat_files_load_exactly_with_ten_meaning_zero(tmp_path, rng):
  import scipy.io  # pylint: disable=g-import-not-at-top
  expected = _split(rng, (32, 32, 3), 10)
  for split in ("train", "test"):
    y = expected[f"y_{split}"]
    scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {
        "X": expected[f"x_{split}"].transpose(1, 2, 3, 0),
        "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)})
  _assert_loaded(datasets.load("svhn_cropped", tmp_path), expected)


def test_stl10_binary_files_load_exactly(tmp_path, rng):
  folder = tmp_path / "stl10_binary"
  folder.mkdir()
  expected = _split(rng, (96, 96, 3), 10, n_train=3, n_test=2)
  for split in ("train", "test"):
    # Column-major per channel, channels first, as the STL-10 authors wrote.
    expected[f"x_{split}"].transpose(0, 3, 2, 1).tofile(
        folder / f"{split}_X.bin")
    (expected[f"y_{split}"] + 1).astype(np.uint8).tofile(
        folder / f"{split}_y.bin")
  _assert_loaded(datasets.load("stl10", tmp_path), expected)


def test_medmnist_npz_files_load_exactly(tmp_path, rng):
  path_x = _split(rng, (28, 28, 3), 9)
  np.savez_compressed(tmp_path / "pathmnist.npz",
                      train_images=path_x["x_train"],
                      train_labels=path_x["y_train"].reshape(-1, 1),
                      val_images=path_x["x_test"],
                      val_labels=path_x["y_test"].reshape(-1, 1),
                      test_images=path_x["x_test"],
                      test_labels=path_x["y_test"].reshape(-1, 1))
  _assert_loaded(datasets.load("pathmnist", tmp_path), path_x)
  chest = dict(x_train=_images(rng, 5, (28, 28)),
               y_train=rng.integers(0, 2, (5, 14)),
               x_test=_images(rng, 2, (28, 28)),
               y_test=rng.integers(0, 2, (2, 14)))
  np.savez(tmp_path / "chestmnist.npz",
           train_images=chest["x_train"], train_labels=chest["y_train"],
           test_images=chest["x_test"], test_labels=chest["y_test"])
  ds = datasets.load("chestmnist", tmp_path)
  _assert_loaded(ds, chest)
  assert ds.multi_label and ds.num_classes == 14


def test_plain_npz_loads_exactly(tmp_path, rng):
  expected = _split(rng, (28, 28), 10)
  np.savez_compressed(tmp_path / "fashion_mnist.npz", **expected)
  _assert_loaded(datasets.load("fashion_mnist", tmp_path, source="local"),
                 expected)


def test_tfds_source_reads_prepared_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    ds = datasets.load("mnist", tmp_path, source="tfds")
  assert ds.x_train.shape == (4, 28, 28) and ds.x_train.dtype == np.uint8
  assert ds.y_train.shape == (4,) and ds.source.startswith("tfds:mnist")


def test_missing_dataset_error_says_where_what_and_how(tmp_path):
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.load("svhn_cropped", tmp_path)
  message = str(e.value)
  assert str(tmp_path) in message
  assert "train_32x32.mat" in message and "ufldl.stanford.edu" in message
  assert "tfds build svhn_cropped" in message


def test_unknown_dataset_and_source_raise_value_error(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
    datasets.load("imagenet", tmp_path)
  with pytest.raises(ValueError, match="unknown source"):
    datasets.load("mnist", tmp_path, source="web")


def test_truncated_idx_file_error_names_the_file(tmp_path, rng):
  expected = _split(rng, (28, 28), 10)
  for k, stem in {"x_train": "train-images-idx3-ubyte",
                  "y_train": "train-labels-idx1-ubyte",
                  "x_test": "t10k-images-idx3-ubyte",
                  "y_test": "t10k-labels-idx1-ubyte"}.items():
    _write_idx(tmp_path / stem, expected[k], gz=False)
  bad = tmp_path / "train-images-idx3-ubyte"
  bad.write_bytes(bad.read_bytes()[:-10])
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
    datasets.load("mnist", tmp_path)


@pytest.mark.parametrize("damage", ["zip header only", "text", "truncated"])
def test_corrupt_npz_error_names_the_file_and_says_it_is_not_an_npz(
    tmp_path, rng, damage):
  path = tmp_path / "mnist.npz"
  if damage == "truncated":
    np.savez(path, x_train=rng.integers(0, 256, (50, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
  else:
    path.write_bytes(b"PK\x03\x04 not really a zip" if damage == "zip header only"
                     else b"x_train,y_train\n")
  with pytest.raises(ValueError, match="mnist.npz: not an .npz file") as e:
    datasets.load("mnist", tmp_path)
  assert "pickle" not in str(e.value)  # numpy's advice for a non-zip file


def test_wrong_shape_and_out_of_range_labels_name_the_file(tmp_path, rng):
  bad_shape = _split(rng, (27, 28), 10)
  np.savez(tmp_path / "mnist.npz", **bad_shape)
  with pytest.raises(ValueError, match=r"mnist.npz.*image shape \(27, 28\)"):
    datasets.load("mnist", tmp_path)
  bad_labels = _split(rng, (28, 28), 10)
  bad_labels["y_test"][0] = 12
  np.savez(tmp_path / "fashion_mnist.npz", **bad_labels)
  with pytest.raises(ValueError, match="fashion_mnist.npz.*out of range"):
    datasets.load("fashion_mnist", tmp_path)


def test_epoch_indices_are_a_permutation_dropping_the_last_partial_batch():
  idx = jax.jit(datasets.epoch_indices, static_argnums=(1, 2))(
      jax.random.key(0), 10, 3)
  assert idx.shape == (3, 3)
  assert len(set(np.asarray(idx).ravel())) == 9
  assert set(np.asarray(idx).ravel()) <= set(range(10))
  other = datasets.epoch_indices(jax.random.key(1), 10, 3)
  assert not np.array_equal(idx, other)


@pytest.mark.parametrize("batch_size", [0, -8, 2.5])
def test_every_function_taking_a_batch_size_refuses_a_bad_one(batch_size):
  circuit = sj.Circuit(widths=(4, 3, 2), method="sgd")
  weights = sj.init_weights(jax.random.key(0), circuit)
  images, labels = np.zeros((6, 2, 2), np.uint8), np.zeros(6, np.int32)
  calls = [
      lambda: datasets.epoch_indices(jax.random.key(0), 6, batch_size),
      lambda: sj.evaluate(circuit, weights, (images, labels), batch_size),
      lambda: sj.sweep.sweep_evaluate(
          circuit, jax.tree.map(lambda m: m[None], weights), images, labels,
          batch_size),
  ]
  for call in calls:
    with pytest.raises(ValueError, match="batch_size must be a positive "
                       f"integer, got {batch_size}"):
      call()


def test_preprocess_scales_to_minus_one_one_and_flattens():
  images = np.array([[[0, 255], [128, 64]]], np.uint8)
  x, _ = datasets.preprocess(images, np.zeros(1, np.int32))
  np.testing.assert_allclose(x, [[-1.0, 1.0, 128 / 127.5 - 1, 64 / 127.5 - 1]],
                             atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.int32])
def test_preprocess_refuses_images_that_are_not_uint8(dtype):
  with pytest.raises(ValueError, match=f"images must be uint8.*{dtype.__name__}"):
    datasets.preprocess(np.zeros((2, 4, 4), dtype), np.zeros(2, np.int32))


@pytest.mark.skipif(not (SHARED / "mnist.npz").exists(),
                    reason="shared datasets not present")
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_shared_copies_load_with_official_counts(name):
  ds = datasets.load(name, SHARED)
  assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape[0] == 10000
  assert np.bincount(ds.y_test).sum() == 10000
