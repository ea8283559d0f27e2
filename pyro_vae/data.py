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
- ``csv:PATH``: a numeric table in UTF-8, optional header; a column named ``label`` or ``y`` is
  taken as labels.
- ``images:DIR``: the PNG/JPEG/BMP files in ``DIR`` (grey-scale unless any is in colour; all of
  one size; 16-bit ones scaled by 65535; none with transparent pixels); files in subfolders named
  by integers take those as labels (``DIR/0/a.png``).

Images come out as float tensors ``[N, channels, height, width]`` scaled to [0, 1]; tables as
``[N, columns]`` in their own units (see :mod:`pyro_vae.preprocessing`). Without a given test
split, a fixed 20 % (10 % for Frey Face) is held out with a seed of its own, so the test set does
not change with the training seed.

A file that cannot be read as asked raises :class:`DataFileError` (a :class:`ValueError`), or
:class:`TypeError` for values that are not numbers, :class:`FileNotFoundError` for a missing path
and :class:`PermissionError` for an unreadable one; each message names the file, the problem and,
where there is one, the fix, in a line or two.
"""

from __future__ import annotations

import csv
import errno
import gzip
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pyro_vae.convention import MISSING_LABEL

if TYPE_CHECKING:
    from PIL import Image

SPLIT_SEED = 0
NAMED_DATASETS = ("digits", "mnist", "fashion-mnist", "frey", "omniglot")
OMNIGLOT_FILES = ("omniglot_background_small1.npz", "omniglot_background_small2.npz")
OMNIGLOT_SIZE = 28
SHOWN = 5  # at most this many array names in a message
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # the starts numpy.load takes for an .npz archive
# what numpy.load and zipfile raise for a damaged archive (RuntimeError: encrypted; MemoryError: a
# header that claims a huge array)
NPZ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    MemoryError,
)
# what PIL's decoders raise for a damaged image
IMAGE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error, MemoryError)
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # PIL's modes of 16-bit grey PNGs
GREY_MODES = ("1", "L", "LA", "La", *SIXTEEN_BIT_MODES)
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class DataFileError(ValueError):
    """A data file that cannot be read as asked; the message names the file, the problem and the fix."""


@dataclass
class DataSplits:
    """A data set split into training and test parts. Split from one file, ``train_rows`` and
    ``test_rows`` are the rows of the file each part's data came from (counted from 0)."""

    name: str
    train_x: torch.Tensor
    test_x: torch.Tensor
    train_y: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    train_rows: np.ndarray | None = None
    test_rows: np.ndarray | None = None

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4

    def select(self, split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Data and labels of ``"train"``, ``"test"`` or ``"all"`` (both: in the file's order when
        split from one file, else training first)."""
        parts = {"train": [(self.train_x, self.train_y)], "test": [(self.test_x, self.test_y)]}
        parts["all"] = parts["train"] + parts["test"]
        if split not in parts:
            raise ValueError(f"unknown split {split!r}; use train, test or all")
        xs, ys = zip(*parts[split], strict=True)
        x, y = torch.cat(xs), None if any(part is None for part in ys) else torch.cat(ys)
        if split == "all" and self.train_rows is not None:
            order = torch.from_numpy(np.argsort(np.concatenate([self.train_rows, self.test_rows])))
            x, y = x[order], None if y is None else y[order]
        return x, y

    def rows(self, split: str) -> np.ndarray | None:
        """The file's row of each datum of :meth:`select` (``split``), or ``None`` when the data
        did not come from one file."""
        if self.train_rows is None:
            return None
        if split == "all":
            return np.arange(len(self.train_rows) + len(self.test_rows))
        return {"train": self.train_rows, "test": self.test_rows}[split]


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
        train,
        test,
    )


def _float(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)


def _reason(error: BaseException) -> str:
    """The first line of a library's message, shortened, to quote in parentheses."""
    text = str(error).strip()
    return text.splitlines()[0][:100] if text else type(error).__name__


def _shown(text: str, limit: int = 20) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _listed(names: Sequence[str]) -> str:
    names = sorted(names)
    return ", ".join(map(repr, names[:SHOWN])) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _unreadable(path: Path, error: BaseException, problem: str, fix: str) -> Exception:
    """What to raise for ``error``, met while reading ``path``: the system's errors by their kind,
    a library's as ``problem`` (its own reason quoted) and ``fix``."""
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"{path} not found")
    if isinstance(error, IsADirectoryError):
        return DataFileError(f"{path} is a directory, not a file")
    if isinstance(error, PermissionError):
        return PermissionError(
            f"{path} cannot be read: permission denied; make it readable (chmod u+r) or ask its owner"
        )
    if isinstance(error, OSError) and error.errno not in (
        None,
        errno.EINVAL,
    ):  # EINVAL: a seek to an offset the damaged file gave
        return DataFileError(f"{path} could not be read: {error.strerror}")
    return DataFileError(f"{path} {problem} ({_reason(error)}); {fix}")


def _existing_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    if not path.is_file():
        kind = "a directory, not a file" if path.is_dir() else "not a regular file"
        raise DataFileError(f"{path} is {kind}; give the path of the {what} itself")


def _images01(array: np.ndarray, full_scale: int = 255) -> np.ndarray:
    """Add a channel axis to ``[N, H, W]`` images and divide integer pixels by ``full_scale``
    (unless all are 0 or 1: binary images stay binary)."""
    if array.ndim == 3:
        array = array[:, None]
    if np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 1:
        return array.astype(np.float32) / full_scale
    return array.astype(np.float32)


def _numeric(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` if it holds real numbers (booleans, integers or floats)."""
    if array.dtype.kind == "c":
        raise DataFileError(
            f"{where} holds complex numbers ({array.dtype}), refused: their imaginary parts would be dropped; "
            "save the real parts (x.real) or the magnitudes (abs(x)) instead"
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{where} holds {array.dtype} values, not numbers; save integers or floats instead")
    return array


def _features(array: np.ndarray, where: str) -> np.ndarray:
    """A numeric table ``[rows, columns]`` or images ``[N, (channels,) height, width]`` as float32
    (no finite value may overflow it), integer images scaled to [0, 1]."""
    _numeric(array, where)
    if array.ndim not in (2, 3, 4):
        hint = "; for a single column save x.reshape(-1, 1)" if array.ndim == 1 else ""
        raise DataFileError(
            f"{where} has shape {array.shape}; expected 2-D [rows, columns] or images "
            f"[N, height, width] or [N, channels, height, width]{hint}"
        )
    if array.size == 0:
        raise DataFileError(f"{where} holds no values (shape {array.shape})")
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        huge = np.isfinite(array) & (np.abs(array) > np.finfo(np.float32).max)
        if huge.any():
            raise DataFileError(
                f"{where} holds {array[huge][0]:g}, beyond the range of the 32-bit floats it is read as "
                "(3.4e38); rescale the data"
            )
    return _images01(array) if array.ndim in (3, 4) else array.astype(np.float32)


def _labels(values: np.ndarray, rows: int, where: str, data: str, lines: Sequence[int] | None = None) -> np.ndarray:
    """Whole-number class labels, one for each of the ``rows`` rows of ``data``, as int64; a
    wrong one is named by its row (or by its line in ``lines``)."""
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{where} holds {values.dtype} values; labels must be integers (number the classes 0, 1, ...)")
    if values.ndim != 1:
        raise DataFileError(f"{where} has shape {values.shape}; expected one label per row, shape ({rows},)")
    if len(values) != rows:
        raise DataFileError(f"{where} holds {len(values)} labels but {data} has {rows} rows; give one label per row")
    if values.dtype.kind == "f":
        whole = (values == np.round(values)) & (np.abs(values) < 2**63)  # false for NaN and infinities
        if not whole.all():
            row = int(np.argmin(whole))
            place = f"line {lines[row]}" if lines is not None else f"row {row}"
            raise DataFileError(f"{where}: labels must be whole numbers, but {place} holds {values[row]}")
    return values.astype(np.int64)


def load_digits() -> DataSplits:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return _split(bunch.images[:, None].astype(np.float32) / 16.0, bunch.target, 0.2, "digits")


def _idx_bytes(path: Path) -> bytes:
    gzipped = path.suffix == ".gz"
    try:
        if gzipped:
            with gzip.open(path) as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        problem = "is not a complete gzip file" if gzipped else "could not be read"
        raise _unreadable(path, error, problem, "download it again") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    raw = _idx_bytes(path)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataFileError(
            f"{path} is not an unsigned-byte IDX file (one starts with the bytes 00 00 08); "
            "give MNIST's *-ubyte files, gzipped or not"
        )
    start = 4 + 4 * raw[3]
    if len(raw) < start:
        raise DataFileError(f"{path} is truncated: it ends within its header; download it again")
    shape = tuple(int(side) for side in np.frombuffer(raw, dtype=">u4", count=raw[3], offset=4))
    if len(raw) - start != math.prod(shape):
        raise DataFileError(
            f"{path} holds {len(raw) - start} bytes of data where its header (shape {shape}) promises "
            f"{math.prod(shape)}; it is truncated or damaged: download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(shape)


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


def _idx_pair(images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray) -> None:
    """An IDX image file ``[N, height, width]`` and its label file, one label per image."""
    if images.ndim != 3:
        raise DataFileError(f"{images_path} holds an array of shape {images.shape}; expected images [N, height, width]")
    if labels.shape != (len(images),):
        raise DataFileError(
            f"{labels_path} holds labels of shape {labels.shape} but {images_path} holds {len(images)} images; "
            "give the label file of the same set"
        )


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
    for part in ("train", "test"):
        _idx_pair(paths[f"{part}_x"], arrays[f"{part}_x"], paths[f"{part}_y"], arrays[f"{part}_y"])
    return DataSplits(
        name,
        _float(_images01(arrays["train_x"])),
        _float(_images01(arrays["test_x"])),
        torch.as_tensor(arrays["train_y"].astype(np.int64)),
        torch.as_tensor(arrays["test_y"].astype(np.int64)),
    )


def _check_npz_start(path: Path) -> None:
    """Refuse, by what it is, a file that does not start as an .npz archive does."""
    with path.open("rb") as handle:
        start = handle.read(len(NPY_MAGIC))
    if start.startswith(ZIP_MAGICS):
        return
    if not start:
        raise DataFileError(f"{path} is empty (0 bytes); write the arrays with numpy.savez")
    if start == NPY_MAGIC:
        raise DataFileError(
            f"{path} holds a single array in .npy format, not an .npz archive of named arrays; "
            "save it with numpy.savez(path, X=array)"
        )
    raise DataFileError(
        f"{path} is not an .npz archive (it does not start as a zip file does); write it with numpy.savez"
    )


def _member(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        array = archive[key]
    except ValueError as error:
        if "allow_pickle" not in str(error):  # numpy's refusal of an object array names the option
            raise
        raise DataFileError(
            f"{path}: array {key!r} holds Python objects, which are not read for safety (reading them can run "
            "code); save numeric arrays instead"
        ) from None
    if not isinstance(array, np.ndarray):
        raise DataFileError(f"{path}: {key!r} is not a NumPy array; write the file with numpy.savez")
    return array


def _read_npz(path: Path, pick: Callable[[list[str]], list[str]]) -> dict[str, np.ndarray]:
    """The arrays that ``pick`` chooses from the names in the .npz archive ``path``; none is
    unpickled."""
    try:
        _check_npz_start(path)
        with np.load(path, allow_pickle=False) as archive:
            return {key: _member(archive, key, path) for key in pick(list(archive.files))}
    except DataFileError:
        raise
    except NPZ_ERRORS as error:
        raise _unreadable(path, error, "is damaged or truncated", "write it again with numpy.savez") from None


def _required(path: Path, keys: Sequence[str]) -> Callable[[list[str]], list[str]]:
    """A ``pick`` for :func:`_read_npz` that takes ``keys``, all of which must be there."""

    def pick(names: list[str]) -> list[str]:
        if not set(keys) <= set(names):
            raise DataFileError(f"{path} has arrays [{_listed(names)}]; expected {_listed(keys)}")
        return list(keys)

    return pick


def load_frey(data_dir: Path) -> DataSplits:
    path = data_dir / "frey_faces.npz" if data_dir.is_dir() else data_dir
    if not path.is_file():
        raise FileNotFoundError(f"frey: {path} not found; pass --data-dir to the folder holding frey_faces.npz")
    images = _read_npz(path, _required(path, ["x"]))["x"]
    return _split(_features(images, f"{path}: array 'x'"), None, 0.1, "frey")


def _omniglot_part(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ink ``[N, 105, 105]`` and alphabet names ``[N]`` of one Omniglot file."""
    arrays = _read_npz(path, _required(path, ["x", "alphabet"]))
    ink = _numeric(arrays["x"], f"{path}: array 'x'")
    if ink.ndim != 3 or ink.size == 0:
        raise DataFileError(f"{path}: array 'x' has shape {ink.shape}; expected images [N, height, width]")
    if arrays["alphabet"].shape != (len(ink),):
        raise DataFileError(
            f"{path}: 'alphabet' has shape {arrays['alphabet'].shape} but 'x' holds {len(ink)} images; "
            "give one alphabet per image"
        )
    return ink, arrays["alphabet"]


def load_omniglot(data_dir: Path) -> DataSplits:
    """Both small background sets, each 105 x 105 image averaged down to 28 x 28 (adaptive average
    pooling: each output pixel is the ink fraction of its 3.75 x 3.75 patch), in [0, 1]."""
    paths = [data_dir / name for name in OMNIGLOT_FILES]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"omniglot: {missing[0]} not found; pass --data-dir to the folder holding {' and '.join(OMNIGLOT_FILES)}"
        )
    images, alphabets = zip(*(_omniglot_part(path) for path in paths), strict=True)
    if images[0].shape[1:] != images[1].shape[1:]:
        raise DataFileError(
            f"the images of {paths[0]} are {images[0].shape[1:]} but those of {paths[1]} {images[1].shape[1:]}; "
            "give the two small background sets"
        )
    ink = torch.as_tensor(np.concatenate(images), dtype=torch.float32).clamp(0, 1).unsqueeze(1)
    small = torch.nn.functional.interpolate(ink, size=(OMNIGLOT_SIZE, OMNIGLOT_SIZE), mode="area")
    _, labels = np.unique(np.concatenate(alphabets), return_inverse=True)
    return _split(small.numpy(), labels, 0.2, "omniglot")


def _npz_layout(path: Path) -> Callable[[list[str]], list[str]]:
    """A ``pick`` for :func:`_read_npz`: ``train``, ``test`` and their labels, or ``X`` (or ``x``) and ``y``."""

    def pick(names: list[str]) -> list[str]:
        if "train" in names and "test" in names:
            return [key for key in ("train", "test", "y_train", "y_test") if key in names]
        key = next((k for k in ("X", "x") if k in names), None)
        if key is None:
            raise DataFileError(
                f"{path} has arrays [{_listed(names)}]; expected 'train' and 'test', or 'X' (or 'x') with optional 'y'"
            )
        return [key, *(["y"] if "y" in names else [])]

    return pick


def _npz_labels(arrays: dict[str, np.ndarray], key: str, data: str, path: Path) -> np.ndarray | None:
    if key not in arrays:
        return None
    return _labels(arrays[key], len(arrays[data]), f"{path}: array {key!r}", repr(data))


def load_npz(path: Path) -> DataSplits:
    """Arrays ``train`` and ``test`` (optional ``y_train``, ``y_test``), or ``X`` (or ``x``) with
    optional ``y``; no Python objects are read."""
    _existing_file(path, "npz data file")
    arrays = _read_npz(path, _npz_layout(path))
    if "train" in arrays:
        train = _features(arrays["train"], f"{path}: array 'train'")
        test = _features(arrays["test"], f"{path}: array 'test'")
        if train.shape[1:] != test.shape[1:]:
            raise DataFileError(
                f"{path}: 'train' has shape {arrays['train'].shape} but 'test' {arrays['test'].shape}; "
                "both need the same shape after the first axis"
            )
        train_y, test_y = (_npz_labels(arrays, f"y_{part}", part, path) for part in ("train", "test"))
        return DataSplits(
            path.stem,
            _float(train),
            _float(test),
            None if train_y is None else torch.as_tensor(train_y),
            None if test_y is None else torch.as_tensor(test_y),
        )
    key = "X" if "X" in arrays else "x"
    x = _features(arrays[key], f"{path}: array {key!r}")
    return _split(x, _npz_labels(arrays, "y", key, path), 0.2, path.stem)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_error(path: Path, line: int, error: csv.Error) -> DataFileError:
    if "field larger than field limit" in str(error):
        return DataFileError(
            f"{path}, line {line}: a cell longer than {csv.field_size_limit()} characters; "
            'is a quote (") left open? close it, or split the cell'
        )
    return DataFileError(f"{path}, line {line}: not readable as CSV ({_reason(error)})")


def _csv_rows(path: Path) -> tuple[list[int], list[list[str]]]:
    """The non-blank rows of a UTF-8 CSV file and the line (counted from 1) on which each ends."""
    lines, rows = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for row in reader:
                if row:
                    lines.append(reader.line_num)
                    rows.append(row)
    except UnicodeDecodeError as error:
        raise DataFileError(
            f"{path} is not UTF-8 text (it holds the byte {error.object[error.start]:#04x}, which cannot start a "
            "character); is it a binary file? save the table as CSV in UTF-8"
        ) from None
    except csv.Error as error:
        raise _csv_error(path, reader.line_num, error) from None
    except OSError as error:
        raise _unreadable(path, error, "could not be read", "check the file") from None
    return lines, rows


def _is_header(row: list[str]) -> bool:
    """A first row is a header if a cell of it is neither empty nor a number."""
    return any(cell.strip() and not _is_number(cell) for cell in row)


def _check_widths(path: Path, lines: list[int], rows: list[list[str]]) -> None:
    width = len(rows[0])
    for line, row in zip(lines, rows, strict=True):
        if len(row) != width:
            raise DataFileError(
                f"{path}, line {line}: {len(row)} columns where line {lines[0]} has {width}; "
                f"every row needs {width} comma-separated cells"
            )


def _csv_numbers(path: Path, lines: list[int], body: list[list[str]], header: list[str] | None) -> np.ndarray:
    """The cells as float64, or the first cell that is not a number named by line and column."""
    try:
        return np.array(body, dtype=np.float64)
    except ValueError:
        pass
    # numpy parses strings as float() does, so _is_number finds the cell it refused
    line, column, cell = next(
        (line, column, cell)
        for line, row in zip(lines, body, strict=True)
        for column, cell in enumerate(row, 1)
        if not _is_number(cell)
    )
    name = f" ({header[column - 1].strip()!r})" if header else ""
    problem = "the cell is empty" if not cell.strip() else f"{_shown(cell)} is not a number"
    raise DataFileError(
        f"{path}, line {line}, column {column}{name}: {problem}; every cell after the header must be a number"
    )


def load_csv(path: Path) -> DataSplits:
    """A numeric table in UTF-8 with an optional header line; a column named ``label`` or ``y``
    holds whole-number labels. Blank lines are skipped; a bad cell is named by line and column."""
    _existing_file(path, "csv data file")
    lines, rows = _csv_rows(path)
    if not rows:
        raise DataFileError(f"{path} is empty; expected rows of comma-separated numbers, after an optional header")
    _check_widths(path, lines, rows)
    header = [cell.strip() for cell in rows[0]] if _is_header(rows[0]) else None
    start = 1 if header else 0
    if len(rows) == start:
        raise DataFileError(f"{path} has a header line but no data rows")
    table = _csv_numbers(path, lines[start:], rows[start:], header)
    label_column = next((header.index(name) for name in ("label", "y") if header and name in header), None)
    labels = None
    if label_column is not None:
        where = f"{path}, column {label_column + 1} ({header[label_column]!r})"
        labels = _labels(table[:, label_column], len(table), where, "the table", lines[start:])
        table = np.delete(table, label_column, axis=1)
    return _split(_features(table, f"{path}: the table"), labels, 0.2, path.stem)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _decoded(path: Path) -> Image.Image:
    """The image in ``path``, decoded, its file closed again."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UnidentifiedImageError:
        raise DataFileError(
            f"{path} is not an image (no PNG, JPEG or BMP data PIL can identify); replace it with one, or remove it"
        ) from None
    except (*IMAGE_ERRORS, Image.DecompressionBombError) as error:
        raise _unreadable(
            path, error, "is damaged or truncated", "replace it with a whole image, or remove it"
        ) from None


def _grey_palette(image: Image.Image) -> bool:
    palette = image.getpalette("RGB") if image.mode in ("P", "PA") else None
    return palette is not None and palette[0::3] == palette[1::3] == palette[2::3]


def _pixels(image: Image.Image, path: Path) -> np.ndarray:
    """``[height, width, channels]`` pixels: 1 channel for grey (and a grey palette), 3 for colour
    (a palette applied); uint16 for 16-bit grey, else uint8. Transparency is refused."""
    transparent = image.mode in ALPHA_MODES or "transparency" in image.info
    if transparent and np.asarray(image.convert("RGBA"))[..., 3].min() < 255:
        raise DataFileError(
            f"{path} has transparent pixels, which have no colour of their own; flatten it onto a background "
            "colour and save it without transparency"
        )
    if image.mode in SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)[..., None]
    grey = image.mode in GREY_MODES or _grey_palette(image)
    return np.asarray(image.convert("L" if grey else "RGB")).reshape(image.height, image.width, -1)


def _check_sizes(folder: Path, paths: list[Path], arrays: list[np.ndarray]) -> None:
    odd = next((index for index, array in enumerate(arrays) if array.shape[:2] != arrays[0].shape[:2]), None)
    if odd is not None:
        sizes = [f"{paths[i].relative_to(folder)} is {arrays[i].shape[1]}x{arrays[i].shape[0]}" for i in (0, odd)]
        raise DataFileError(
            f"the images in {folder} differ in size: {' but '.join(sizes)} (width x height); resize them to one size"
        )


def load_images(folder: Path) -> DataSplits:
    """The PNG/JPEG/BMP files in ``folder`` and its subfolders, read one at a time.

    Grey images are replicated to three channels if any image is in colour; palettes are applied
    (a grey palette gives grey). 8-bit pixels are divided by 255 and 16-bit ones by 65535 (a folder
    of 8-bit images that are all 0 or 1 stays binary). Alpha that is fully opaque is dropped; an
    image with any transparent pixel is refused, to be flattened onto a background first.
    """
    if not folder.is_dir():
        if folder.exists():
            raise DataFileError(f"{folder} is a file, not a folder; give images:DIR the folder holding the images")
        raise FileNotFoundError(f"image folder {folder} not found")
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not paths:
        raise DataFileError(
            f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files (subfolders included); put the images there"
        )
    arrays = [_pixels(_decoded(path), path) for path in paths]
    _check_sizes(folder, paths, arrays)
    sixteen_bit = any(array.dtype == np.uint16 for array in arrays)
    if sixteen_bit:  # 8-bit images to the 16-bit scale: 255 * 257 = 65535
        arrays = [array if array.dtype == np.uint16 else array.astype(np.uint16) * 257 for array in arrays]
    channels = max(array.shape[2] for array in arrays)
    stacked = np.stack([np.broadcast_to(array, (*array.shape[:2], channels)) for array in arrays]).transpose(0, 3, 1, 2)
    parents = [path.parent.relative_to(folder).as_posix() for path in paths]
    labels = np.array([int(parent) for parent in parents]) if all(p.lstrip("-").isdigit() for p in parents) else None
    return _split(_images01(stacked, 65535 if sixteen_bit else 255), labels, 0.2, folder.name)


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
