"""Data sets by name, read from local files; nothing is downloaded unless asked.

``load_dataset(spec)`` understands:

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images; always available offline).
- ``mnist`` / ``fashion-mnist``: the raw IDX files (``train-images-idx3-ubyte[.gz]`` ...) in
  ``data_dir``, or in torchvision's layout ``data_dir/MNIST/raw``; ``download=True`` fetches them
  with torchvision.
- ``frey``: ``frey_faces.npz`` (array ``x``, 1965 x 28 x 20) in ``data_dir``.
- ``omniglot``: the background "small 1" and "small 2" sets, ``omniglot_background_small{1,2}.npz``
  (array ``x``, 105 x 105, 1 = ink) in ``data_dir``, together 5,840 characters averaged down to
  28 x 28 (ink bright on dark, as MNIST), the labels their alphabets in sorted order.
- ``npz:PATH``: arrays ``train``/``test`` (optional ``y_train``/``y_test``) or ``X``/``x`` with
  optional ``y``.
- ``csv:PATH``: a numeric table, optional header; a column named ``label`` or ``y`` is taken as
  labels.
- ``images:DIR``: the PNG/JPEG/BMP files in ``DIR`` (grey-scale unless any is in colour; all of
  one size); files in subfolders named by integers take those as labels (``DIR/0/a.png``).

Images come out as float tensors ``[N, channels, height, width]`` scaled to [0, 1]; tables as
``[N, columns]`` in their own units (see :mod:`pyro_vae.preprocessing`). Without a given test
split, a fixed 20 % (10 % for Frey Face) is held out with a seed of its own, so the test set does
not change with the training seed.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae.convention import MISSING_LABEL

SPLIT_SEED = 0
NAMED_DATASETS = ("digits", "mnist", "fashion-mnist", "frey", "omniglot")
OMNIGLOT_FILES = ("omniglot_background_small1.npz", "omniglot_background_small2.npz")
OMNIGLOT_SIZE = 28


@dataclass
class DataSplits:
    """A data set split into training and test parts."""

    name: str
    train_x: torch.Tensor
    test_x: torch.Tensor
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4

    def select(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Data and labels of ``"train"``, ``"test"`` or ``"all"`` (both, training first)."""
        parts = {"train": [(self.train_x, self.train_y)], "test": [(self.test_x, self.test_y)]}
        parts["all"] = parts["train"] + parts["test"]
        if split not in parts:
            raise ValueError(f"unknown split {split!r}; use train, test or all")
        xs, ys = zip(*parts[split], strict=True)
        return torch.cat(xs), None if any(part is None for part in ys) else torch.cat(ys)


def _split(x: np.ndarray, y: np.ndarray | None, test_fraction: float, name: str) -> DataSplits:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = max(1, round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return DataSplits(
        name,
        _float(x[train]),
        _float(x[test]),
        None if y is None else torch.as_tensor(y[train], dtype=torch.long),
        None if y is None else torch.as_tensor(y[test], dtype=torch.long),
    )


def _float(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)


def _images01(array: np.ndarray) -> np.ndarray:
    """Add a channel axis to ``[N, H, W]`` images and scale integer pixels to [0, 1]."""
    if array.ndim == 3:
        array = array[:, None]
    if np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 1:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def load_digits() -> DataSplits:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _split(bunch.images[:, None].astype(np.float32) / 16.0, bunch.target, 0.2, "digits")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape.astype(int))


_IDX_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _find_idx(data_dir: Path, name: str, stem: str) -> Path | None:
    for folder in (data_dir, data_dir / "raw", data_dir / _IDX_FOLDER[name] / "raw"):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _download_idx(data_dir: Path, name: str) -> None:
    import torchvision

    dataset_class = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}[name]
    for train in (True, False):
        dataset_class(str(data_dir), train=train, download=True)


def load_idx_dataset(name: str, data_dir: Path, download: bool = False) -> DataSplits:
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    paths = {key: _find_idx(data_dir, name, stem) for key, stem in stems.items()}
    if None in paths.values() and download:
        _download_idx(data_dir, name)
        paths = {key: _find_idx(data_dir, name, stem) for key, stem in stems.items()}
    missing = [stems[key] for key, path in paths.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{name}: {', '.join(missing)} not found in {data_dir} (nor its raw/ or "
            f"{_IDX_FOLDER[name]}/raw/ folders); pass --data-dir to where the IDX files are, "
            "or --download to fetch them"
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    return DataSplits(
        name,
        _float(_images01(arrays["train_x"])),
        _float(_images01(arrays["test_x"])),
        torch.as_tensor(arrays["train_y"].astype(np.int64)),
        torch.as_tensor(arrays["test_y"].astype(np.int64)),
    )


def load_frey(data_dir: Path) -> DataSplits:
    path = data_dir / "frey_faces.npz" if data_dir.is_dir() else data_dir
    if not path.is_file():
        raise FileNotFoundError(f"frey: {path} not found; pass --data-dir to the folder holding frey_faces.npz")
    with np.load(path, allow_pickle=False) as archive:
        images = archive["x"]
    return _split(_images01(images), None, 0.1, "frey")


def load_omniglot(data_dir: Path) -> DataSplits:
    """Both small background sets, each 105 x 105 image averaged down to 28 x 28 (adaptive average
    pooling: each output pixel is the ink fraction of its 3.75 x 3.75 patch), in [0, 1]."""
    paths = [data_dir / name for name in OMNIGLOT_FILES]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"omniglot: {missing[0]} not found; pass --data-dir to the folder holding {' and '.join(OMNIGLOT_FILES)}"
        )
    images, alphabets = [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as archive:
            images.append(archive["x"])
            alphabets.append(archive["alphabet"])
    ink = torch.as_tensor(np.concatenate(images), dtype=torch.float32).clamp(0, 1).unsqueeze(1)
    small = torch.nn.functional.interpolate(ink, size=(OMNIGLOT_SIZE, OMNIGLOT_SIZE), mode="area")
    _, labels = np.unique(np.concatenate(alphabets), return_inverse=True)
    return _split(small.numpy(), labels, 0.2, "omniglot")


def _features(array: np.ndarray) -> np.ndarray:
    return _images01(array) if array.ndim in (3, 4) else array.astype(np.float32)


def load_npz(path: Path) -> DataSplits:
    if not path.is_file():
        raise FileNotFoundError(f"npz data file {path} not found")
    with np.load(path, allow_pickle=False) as archive:
        arrays = dict(archive)
    if "train" in arrays and "test" in arrays:
        train_y, test_y = arrays.get("y_train"), arrays.get("y_test")
        return DataSplits(
            path.stem,
            _float(_features(arrays["train"])),
            _float(_features(arrays["test"])),
            None if train_y is None else torch.as_tensor(train_y.astype(np.int64)),
            None if test_y is None else torch.as_tensor(test_y.astype(np.int64)),
        )
    key = next((k for k in ("X", "x") if k in arrays), None)
    if key is None:
        raise ValueError(
            f"{path} has arrays {sorted(arrays)}; expected 'train' and 'test', or 'X' (or 'x') with optional 'y'"
        )
    labels = arrays.get("y")
    return _split(_features(arrays[key]), None if labels is None else labels.astype(np.int64), 0.2, path.stem)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_csv(path: Path) -> DataSplits:
    if not path.is_file():
        raise FileNotFoundError(f"csv data file {path} not found")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise ValueError(f"{path} is empty")
    header = None if all(_is_number(cell) for cell in rows[0]) else [cell.strip() for cell in rows[0]]
    body = rows[1:] if header else rows
    try:
        table = np.array(body, dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path}: every cell after the header must be a number ({error})") from None
    label_column = next((header.index(name) for name in ("label", "y") if header and name in header), None)
    labels = None
    if label_column is not None:
        labels = table[:, label_column].astype(np.int64)
        table = np.delete(table, label_column, axis=1)
    return _split(table.astype(np.float32), labels, 0.2, path.stem)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def load_images(folder: Path) -> DataSplits:
    from PIL import Image

    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found")
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    images = [Image.open(path) for path in paths]
    mode = "RGB" if any(image.mode not in ("1", "L", "LA", "I", "I;16", "P") for image in images) else "L"
    arrays = [np.asarray(image.convert(mode)) for image in images]
    sizes = {array.shape for array in arrays}
    if len(sizes) > 1:
        raise ValueError(f"the images in {folder} differ in size ({sorted(sizes)[:3]}); resize them to one size")
    stacked = np.stack(arrays)
    stacked = stacked.transpose(0, 3, 1, 2) if mode == "RGB" else stacked
    parents = [path.parent.relative_to(folder).as_posix() for path in paths]
    labels = np.array([int(parent) for parent in parents]) if all(p.lstrip("-").isdigit() for p in parents) else None
    return _split(_images01(stacked), labels, 0.2, folder.name)


def load_dataset(spec: str, data_dir: str | Path | None = None, download: bool = False) -> DataSplits:
    """Load the data set named by ``spec`` (see the module docstring).

    :param data_dir: folder of the files for ``mnist``, ``fashion-mnist`` and ``frey``; defaults to
        ``data/<name>``.
    :param bool download: let torchvision download MNIST or Fashion-MNIST if the files are missing.
    """
    if spec.startswith("npz:"):
        return load_npz(Path(spec[4:]))
    if spec.startswith("csv:"):
        return load_csv(Path(spec[4:]))
    if spec.startswith("images:"):
        return load_images(Path(spec[7:]))
    if spec == "digits":
        return load_digits()
    folder = Path(data_dir) if data_dir is not None else Path("data") / spec
    if spec in _IDX_FOLDER:
        return load_idx_dataset(spec, folder, download)
    if spec == "frey":
        return load_frey(folder)
    if spec == "omniglot":
        return load_omniglot(folder)
    raise ValueError(
        f"unknown data set {spec!r}; use one of {', '.join(NAMED_DATASETS)}, npz:PATH, csv:PATH or images:DIR"
    )


def hide_labels(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Keep ``per_class`` labels of every class (chosen with ``seed``) and mark the rest missing
    (:data:`MISSING_LABEL`), for semi-supervised training."""
    generator = torch.Generator().manual_seed(seed)
    kept = torch.full_like(labels, MISSING_LABEL)
    for label in labels.unique():
        members = (labels == label).nonzero().squeeze(1)
        chosen = members[torch.randperm(len(members), generator=generator)[:per_class]]
        kept[chosen] = label
    return kept
