"""Data loading: bundled digits, IDX files, npz and csv, and the preprocessing stored with a model."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from pyro_vae.data import load_dataset, read_idx
from pyro_vae.preprocessing import Preprocessor
from tests.conftest import shared_data


def test_digits_are_images_in_the_unit_interval(digits):
    assert digits.x_shape == (1, 8, 8) and digits.is_image
    assert len(digits.train_x) + len(digits.test_x) == 1797
    assert digits.train_x.min() == 0 and digits.train_x.max() == 1
    assert set(digits.test_y.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(again.test_x, digits.test_x), "the test split must not move"


def test_idx_reader_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + array.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("name,first_label", [("mnist", 5), ("fashion-mnist", 9)])
def test_real_idx_data_sets(name, first_label):
    data = load_dataset(name, shared_data(name))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_y[0].item() == first_label
    assert 0 <= data.train_x.min() and data.train_x.max() == 1


def test_frey_faces():
    data = load_dataset("frey", shared_data("frey-face"))
    assert data.x_shape == (1, 28, 20)
    assert len(data.train_x) + len(data.test_x) == 1965


def test_omniglot_is_averaged_down_to_mnist_size_with_bright_ink(tmp_path):
    data = load_dataset("omniglot", shared_data("omniglot"))
    assert data.x_shape == (1, 28, 28) and len(data.train_x) + len(data.test_x) == 2720 + 3120
    assert 0 <= data.train_x.min() and data.train_x.max() <= 1
    assert data.train_x.mean() < 0.2, "ink (1) is the minority, as in MNIST"
    assert set(data.train_y.tolist()) == set(range(8)), "eight alphabets in the two small sets"
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("omniglot", tmp_path)


def test_npz_and_csv_tables(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)) * [1, 100, 1e4]
    y = (np.arange(50) % 2).astype(np.int64)
    np.savez(tmp_path / "t.npz", X=x, y=y)
    table = load_dataset(f"npz:{tmp_path / 't.npz'}")
    assert table.x_shape == (3,) and not table.is_image
    assert len(table.train_x) == 40 and len(table.test_y) == 10
    with open(tmp_path / "t.csv", "w") as handle:
        handle.write(
            "a,b,label,c\n" + "\n".join(f"{row[0]},{row[1]},{label},{row[2]}" for row, label in zip(x, y, strict=True))
        )
    from_csv = load_dataset(f"csv:{tmp_path / 't.csv'}")
    assert from_csv.x_shape == (3,)
    assert torch.allclose(from_csv.train_x, table.train_x) and torch.equal(from_csv.train_y, table.train_y)


def test_npz_with_given_splits(tmp_path):
    train, test = np.zeros((7, 4, 4), np.uint8), np.ones((3, 4, 4), np.uint8)
    np.savez(tmp_path / "b.npz", train=train, test=test)
    data = load_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert data.x_shape == (1, 4, 4) and len(data.test_x) == 3
    assert data.test_x.max() == 1, "binary uint8 images stay binary"


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "odd.npz", images=np.zeros(3))
    with pytest.raises(ValueError, match="expected 'train' and 'test'"):
        load_dataset(f"npz:{tmp_path / 'odd.npz'}")
    (tmp_path / "words.csv").write_text("a,b\n1,x\n")
    with pytest.raises(ValueError, match="must be a number"):
        load_dataset(f"csv:{tmp_path / 'words.csv'}")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("cifar")


@pytest.mark.parametrize("method", ["minmax", "standardize"])
def test_preprocessing_is_fitted_on_training_data(method):
    train = torch.tensor([[0.0, 5.0, 1.0], [10.0, 5.0, 3.0]])
    preprocessor = Preprocessor(method).fit(train)
    out = preprocessor.transform(train)
    if method == "minmax":
        assert torch.equal(out[:, 0], torch.tensor([0.0, 1.0]))
    else:
        assert torch.allclose(out.mean(0)[[0, 2]], torch.zeros(2))
    assert torch.equal(out[:, 1], torch.zeros(2)), "a constant column maps to 0, not NaN"
    with pytest.raises(ValueError, match="shape"):
        preprocessor.transform(torch.zeros(2, 4))


def test_binarization():
    preprocessor = Preprocessor("none", binarize=0.5).fit(torch.zeros(1, 3))
    assert torch.equal(preprocessor.transform(torch.tensor([[0.2, 0.5, 0.9]])), torch.tensor([[0.0, 0.0, 1.0]]))


def test_a_folder_of_images_with_class_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in (0, 1):
        (tmp_path / str(label)).mkdir()
        for index in range(5):
            pixels = rng.integers(0, 256, size=(6, 4), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / str(label) / f"{index}.png")
    data = load_dataset(f"images:{tmp_path}")
    x = torch.cat([data.train_x, data.test_x])
    y = torch.cat([data.train_y, data.test_y])
    assert x.shape == (10, 1, 6, 4) and 0 <= x.min() and x.max() <= 1
    assert sorted(y.tolist()) == [0] * 5 + [1] * 5
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "0" / "small.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_dataset(f"images:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(f"images:{tmp_path / 'missing'}")


def test_all_of_a_file_comes_in_the_files_order_and_each_split_knows_its_rows(tmp_path):
    path = tmp_path / "numbered.csv"
    path.write_text("\n".join(f"{row},{row % 3}" for row in range(50)) + "\n")
    data = load_dataset(f"csv:{path}")
    assert torch.equal(data.select("all")[0][:, 0], torch.arange(50.0))
    for split in ("train", "test"):
        assert torch.equal(data.select(split)[0][:, 0], torch.as_tensor(data.rows(split), dtype=torch.float32))
    assert sorted([*data.rows("train"), *data.rows("test")]) == list(range(50))
