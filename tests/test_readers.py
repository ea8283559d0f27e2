"""The readers name the file, the problem and the fix for a bad file (issue 15, point 5): real bad
files written here, and property-based checks that random bytes, truncations, corruptions and odd
arrays raise only ValueError, TypeError or FileNotFoundError, each message naming the file."""

from __future__ import annotations

import builtins
import errno
import gzip
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, scalar_dtypes
from PIL import Image

from pyro_vae.data import (
    OMNIGLOT_FILES,
    _pixels,
    load_csv,
    load_frey,
    load_idx_dataset,
    load_images,
    load_npz,
    load_omniglot,
    read_idx,
)

PROPERTY = settings(max_examples=50, deadline=None, database=None)
CLEAN_ERRORS = (ValueError, TypeError, FileNotFoundError)
REPO = Path(__file__).resolve().parents[1]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def image_bytes(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape) + array.tobytes()


def assert_named(error: BaseException, path: Path) -> None:
    """A short message (one or two lines) that names the file."""
    message = str(error)
    assert path.name in message, message
    assert message.count("\n") <= 1 and len(message) < 400, message


def reads_or_fails_cleanly(read: Callable[[Path], object], path: Path) -> None:
    try:
        read(path)
    except CLEAN_ERRORS as error:
        assert_named(error, path)


# ------------------------------------------------------------------ npz


def test_zero_byte_and_truncated_npz_are_named(tmp_path):
    good = npz_bytes(X=np.ones((20, 3)), y=np.arange(20))
    (tmp_path / "zero.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.npz is empty \(0 bytes\)"):
        load_npz(tmp_path / "zero.npz")
    for cut in (len(good) // 2, len(good) - 10, 40):
        (tmp_path / "cut.npz").write_bytes(good[:cut])
        with pytest.raises(ValueError, match=r"cut\.npz is damaged or truncated.*numpy\.savez"):
            load_npz(tmp_path / "cut.npz")


def test_npy_renamed_npz_says_what_it_is(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((5, 2)))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"a\.npz holds a single array in \.npy format.*numpy\.savez\(path, X=array\)"):
        load_npz(tmp_path / "a.npz")


def test_object_array_is_refused_without_suggesting_pickles(tmp_path):
    np.savez(tmp_path / "o.npz", X=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match=r"o\.npz: array 'X' holds Python objects.*not read for safety") as caught:
        load_npz(tmp_path / "o.npz")
    assert "pickle" not in str(caught.value)


def test_complex_array_is_refused_naming_its_dtype(tmp_path):
    np.savez(tmp_path / "c.npz", X=np.ones((5, 2)) + 1j)
    with pytest.raises(ValueError, match=r"c\.npz: array 'X' holds complex numbers \(complex128\).*imaginary"):
        load_npz(tmp_path / "c.npz")


def test_one_dimensional_x_names_the_expected_and_the_found_shape(tmp_path):
    np.savez(tmp_path / "v.npz", X=np.arange(20.0))
    with pytest.raises(ValueError, match=r"v\.npz: array 'X' has shape \(20,\); expected 2-D \[rows, columns\]"):
        load_npz(tmp_path / "v.npz")


def test_labels_of_the_wrong_length_name_both_lengths(tmp_path):
    np.savez(tmp_path / "l.npz", X=np.ones((20, 3)), y=np.arange(19))
    with pytest.raises(ValueError, match=r"l\.npz: array 'y' holds 19 labels but 'X' has 20 rows"):
        load_npz(tmp_path / "l.npz")
    np.savez(tmp_path / "h.npz", X=np.ones((4, 3)), y=np.array([0, 1, 0.5, 1]))
    with pytest.raises(ValueError, match=r"h\.npz: array 'y': labels must be whole numbers, but row 2 holds 0\.5"):
        load_npz(tmp_path / "h.npz")


def test_values_beyond_float32_are_named(tmp_path):
    (tmp_path / "big.csv").write_text("a,b\n1,2\n3,1e99\n")
    with pytest.raises(ValueError, match=r"big\.csv: the table holds 1e\+99, beyond the range of the 32-bit floats"):
        load_csv(tmp_path / "big.csv")


def test_text_arrays_are_a_type_error_naming_the_dtype(tmp_path):
    np.savez(tmp_path / "s.npz", X=np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(TypeError, match=r"s\.npz: array 'X' holds <U1 values, not numbers"):
        load_npz(tmp_path / "s.npz")
    np.savez(tmp_path / "t.npz", X=np.ones((2, 2)), y=np.array(["cat", "dog"]))
    with pytest.raises(TypeError, match=r"t\.npz: array 'y' holds <U3 values; labels must be integers"):
        load_npz(tmp_path / "t.npz")


def test_frey_and_omniglot_files_that_are_damaged_are_named(tmp_path):
    (tmp_path / "frey_faces.npz").write_bytes(npz_bytes(x=np.zeros((5, 28, 20), np.uint8))[:-30])
    with pytest.raises(ValueError, match=r"frey_faces\.npz is damaged or truncated"):
        load_frey(tmp_path)
    for name in OMNIGLOT_FILES:
        (tmp_path / name).write_bytes(npz_bytes(x=np.zeros((3, 105, 105), np.uint8), alphabet=np.array(["a"] * 2)))
    with pytest.raises(ValueError, match=r"small1\.npz: 'alphabet' has shape \(2,\) but 'x' holds 3 images"):
        load_omniglot(tmp_path)


# ------------------------------------------------------------------ csv


def test_csv_ragged_row_names_its_line_and_both_column_counts(tmp_path):
    (tmp_path / "r.csv").write_text("a,b,c\n1,2,3\n\n4,5\n")
    with pytest.raises(ValueError, match=r"r\.csv, line 4: 2 columns where line 1 has 3"):
        load_csv(tmp_path / "r.csv")


@pytest.mark.parametrize("cell,problem", [("", "the cell is empty"), ("five", "'five' is not a number")])
def test_csv_bad_cell_names_its_line_and_column(tmp_path, cell, problem):
    (tmp_path / "c.csv").write_text(f"a,b,c\n1,2,3\n4,{cell},6\n")
    with pytest.raises(ValueError, match=rf"c\.csv, line 3, column 2 \('b'\): {problem}; every cell"):
        load_csv(tmp_path / "c.csv")


def test_csv_huge_field_says_a_quote_may_be_open(tmp_path):
    (tmp_path / "q.csv").write_text('a,b\n1,"' + "9" * 200_000 + "\n2,3\n")
    with pytest.raises(ValueError, match=r"q\.csv, line 2: a cell longer than \d+ characters; is a quote"):
        load_csv(tmp_path / "q.csv")


def test_csv_directory_empty_header_only_and_binary_files(tmp_path):
    (tmp_path / "x.csv").mkdir()
    with pytest.raises(ValueError, match=r"x\.csv is a directory, not a file"):
        load_csv(tmp_path / "x.csv")
    (tmp_path / "e.csv").write_text("\n\n")
    with pytest.raises(ValueError, match=r"e\.csv is empty"):
        load_csv(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"h\.csv has a header line but no data rows"):
        load_csv(tmp_path / "h.csv")
    (tmp_path / "b.csv").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=r"b\.csv is not UTF-8 text.*binary"):
        load_csv(tmp_path / "b.csv")


def test_csv_labels_must_be_whole_numbers(tmp_path):
    (tmp_path / "l.csv").write_text("a,label\n1,0\n2,1.5\n3,1\n")
    with pytest.raises(ValueError, match=r"l\.csv, column 2 \('label'\): labels must be whole numbers, but line 3"):
        load_csv(tmp_path / "l.csv")


# ------------------------------------------------------------------ image folders


def grey_images(folder: Path, count: int = 3, size: tuple[int, int] = (4, 5)) -> None:
    folder.mkdir(exist_ok=True)
    for index in range(count):
        Image.fromarray(np.full(size, 20 * index % 256, np.uint8)).save(folder / f"{index}.png")


def all_images(data) -> torch.Tensor:
    """The images of both splits, in file order (the split is a fixed permutation)."""
    x = torch.cat([data.train_x, data.test_x])
    order = np.random.default_rng(0).permutation(len(x))
    return x[np.argsort(np.concatenate([order[len(data.test_x) :], order[: len(data.test_x)]]))]


@pytest.mark.parametrize("content", [b"not an image", b"", "truncated", "corrupt"])
def test_fake_truncated_and_corrupt_pngs_are_named(tmp_path, content):
    grey_images(tmp_path)
    good = image_bytes(Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20)))
    corrupt = good[:60] + bytes(b ^ 0x5A for b in good[60:])
    content = {"truncated": good[: len(good) - 20], "corrupt": corrupt}.get(content, content)
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.png is (not an image|damaged or truncated)"):
        load_images(tmp_path)


def test_sixteen_bit_pngs_are_scaled_by_65535(tmp_path):
    values = np.array([[0, 1000, 30000], [40000, 65535, 7]], np.uint16)
    for name in ("a", "b"):
        Image.fromarray(values).save(tmp_path / f"{name}.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I")
    x = all_images(load_images(tmp_path))
    assert torch.allclose(x[0, 0], torch.as_tensor(values / 65535, dtype=torch.float32))
    Image.fromarray(np.full((2, 3), 255, np.uint8)).save(tmp_path / "c.png")
    assert torch.equal(all_images(load_images(tmp_path))[2, 0], torch.ones(2, 3)), "8-bit white is still 1"


@pytest.mark.parametrize("mode", ["I", "I;16B"])
def test_the_other_sixteen_bit_modes_keep_their_values(mode):
    values = np.array([[0, 1000], [40000, 65535]])
    image = Image.fromarray(values.astype(np.int32 if mode == "I" else ">u2"))
    assert image.mode == mode
    pixels = _pixels(image, Path("a.png"))
    assert pixels.dtype == np.uint16 and np.array_equal(pixels[..., 0], values)


def test_palette_pngs_are_read_through_their_palette(tmp_path):
    palette = Image.new("P", (3, 2))
    palette.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 200] + [0] * 759)
    palette.putdata([0, 1, 2, 2, 1, 0])
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "q.png")
    x = all_images(load_images(tmp_path))
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).transpose(2, 0, 1) / 255
    assert x.shape == (2, 3, 2, 3) and torch.allclose(x[0], torch.as_tensor(expected, dtype=torch.float32))
    grey = Image.fromarray(np.array([[0, 100, 200]], np.uint8)).convert("P")
    for name in ("p", "q"):
        grey.save(tmp_path / f"{name}.png")
    assert load_images(tmp_path).x_shape == (1, 1, 3), "a grey palette gives grey images"


def transparent(mode: str, alpha: int) -> Image.Image:
    if mode == "P":
        image = Image.new("P", (4, 3), 1)
        image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
        image.info["transparency"] = 1 if alpha < 255 else 0
        return image
    return Image.new(mode, (4, 3), (90, alpha) if mode == "LA" else (200, 100, 50, alpha))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_partial_transparency_is_refused_and_opaque_alpha_dropped(tmp_path, mode):
    grey_images(tmp_path, size=(3, 4))
    image = transparent(mode, 100)
    image.save(tmp_path / "a.png", **({"transparency": 1} if mode == "P" else {}))
    with pytest.raises(ValueError, match=r"a\.png has transparent pixels.*flatten it onto a background"):
        load_images(tmp_path)
    transparent(mode, 255).save(tmp_path / "a.png")
    x = all_images(load_images(tmp_path))
    expected = [90 / 255] if mode == "LA" else [200 / 255, 100 / 255, 50 / 255]
    assert torch.allclose(x[-1, :, 0, 0], torch.tensor(expected)), "opaque alpha is dropped silently"


def test_images_of_differing_sizes_name_two_files(tmp_path):
    grey_images(tmp_path)
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"differ in size: 0\.png is 5x4 but small\.png is 3x3 \(width x height\)"):
        load_images(tmp_path)


def test_a_folder_without_image_files_says_so(tmp_path):
    (tmp_path / "sub.png").mkdir()  # a folder named like an image is no image
    with pytest.raises(ValueError, match=r"holds no \.png/\.jpg/\.jpeg/\.bmp files"):
        load_images(tmp_path)
    grey_images(tmp_path / "one")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        load_images(tmp_path / "one" / "0.png")


def test_a_folder_is_read_one_file_at_a_time(tmp_path):
    pytest.importorskip("resource")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("counting open files needs /proc")
    grey_images(tmp_path, count=60)
    script = textwrap.dedent(
        f"""
        import os, resource
        from pathlib import Path
        import PIL.PngImagePlugin
        from pyro_vae.data import load_images
        assert len(os.listdir("/proc/self/fd")) < 30
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        data = load_images(Path({str(tmp_path)!r}))
        print(len(data.train_x) + len(data.test_x))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["60"], done.stderr[-2000:]


# ------------------------------------------------------------------ idx files and system errors


def test_truncated_idx_files_and_mismatched_labels_are_named(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    (tmp_path / "cut").write_bytes(good[:-4])
    with pytest.raises(
        ValueError, match=r"cut holds 14 bytes of data where its header \(shape \(2, 3, 3\)\) promises 18"
    ):
        read_idx(tmp_path / "cut")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:-6])
    with pytest.raises(ValueError, match=r"cut\.gz is not a complete gzip file"):
        read_idx(tmp_path / "cut.gz")
    for stem, array in [("train-images", np.zeros((4, 2, 2))), ("train-labels", np.zeros(3))]:
        (tmp_path / f"{stem}-idx{array.ndim}-ubyte").write_bytes(idx_bytes(array.astype(np.uint8)))
    for stem, array in [("t10k-images", np.zeros((2, 2, 2))), ("t10k-labels", np.zeros(2))]:
        (tmp_path / f"{stem}-idx{array.ndim}-ubyte").write_bytes(idx_bytes(array.astype(np.uint8)))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte holds labels of shape \(3,\) but .* 4 images"):
        load_idx_dataset("mnist", tmp_path)


def deny(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Opening ``denied`` fails as a file without read permission does (chmod cannot, for root)."""
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(denied):
            raise PermissionError(errno.EACCES, "Permission denied", str(denied))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)


@pytest.mark.parametrize("name", ["t.csv", "t.npz", "idx", "img/0.png"])
def test_permission_denied_names_the_file_and_the_fix(tmp_path, monkeypatch, name):
    path = tmp_path / name
    grey_images(tmp_path / "img")
    path.write_bytes(b"1,2\n3,4\n" if name.endswith(".csv") else npz_bytes(X=np.ones((3, 2))))
    read = {"t.csv": load_csv, "t.npz": load_npz, "idx": read_idx}.get(name, lambda _: load_images(path.parent))
    deny(monkeypatch, path)
    with pytest.raises(PermissionError, match=rf"{name.split('/')[-1]} cannot be read: permission denied; make it"):
        read(path)


# ------------------------------------------------------------------ properties


def _grey_png() -> bytes:
    return image_bytes(Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)))


VALID = {
    "npz": npz_bytes(X=np.arange(30.0).reshape(10, 3), y=np.arange(10) % 2),
    "frey": npz_bytes(x=np.arange(5 * 28 * 20, dtype=np.uint8).reshape(5, 28, 20)),
    "omniglot": npz_bytes(x=np.ones((3, 105, 105), np.uint8), alphabet=np.array(["a", "b", "a"])),
    "csv": b"a,b,label\n1,2,0\n3.5,4,1\n5,6e2,1\n",
    "idx": idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)),
    "idx.gz": gzip.compress(idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))),
    "png": _grey_png(),
    "rgba.png": image_bytes(Image.new("RGBA", (8, 6), (1, 2, 3, 255))),
    "16-bit.png": image_bytes(Image.fromarray(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)),
    "jpeg": image_bytes(Image.new("RGB", (8, 6), (10, 200, 30)), "JPEG"),
    "bmp": image_bytes(Image.new("P", (8, 6)), "BMP"),
}


def place(folder: Path, kind: str, content: bytes) -> tuple[Path, Callable[[Path], object]]:
    """Write ``content`` where the reader of ``kind`` looks for it; the file and that reader."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "omniglot":
        (folder / OMNIGLOT_FILES[1]).write_bytes(VALID["omniglot"])
        path, read = folder / OMNIGLOT_FILES[0], lambda _: load_omniglot(folder)
    elif kind.endswith(("png", "jpeg", "bmp")):
        (folder / "good.png").write_bytes(VALID["png"])
        path, read = folder / f"image.{kind.split('.')[-1]}", lambda _: load_images(folder)
    else:
        name = {"npz": "t.npz", "frey": "frey_faces.npz", "csv": "t.csv"}.get(kind, f"train-images-{kind}")
        reader = {"npz": load_npz, "frey": load_frey, "csv": load_csv}.get(kind, read_idx)
        path, read = folder / name, reader
    path.write_bytes(content)
    return path, read


def test_the_valid_samples_load(tmp_path):
    for kind, content in VALID.items():
        path, read = place(tmp_path / kind, kind, content)
        read(path)


@pytest.mark.parametrize("kind", sorted(VALID))
@PROPERTY
@given(content=st.binary(max_size=300))
def test_random_bytes_fail_cleanly(tmp_path_factory, kind, content):
    path, read = place(tmp_path_factory.mktemp("random"), kind, content)
    reads_or_fails_cleanly(read, path)


@pytest.mark.parametrize("kind", sorted(VALID))
@PROPERTY
@given(
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=3),
)
def test_truncated_and_corrupted_files_fail_cleanly(tmp_path_factory, kind, cut, flips):
    content = bytearray(VALID[kind][: round(cut * len(VALID[kind]))])
    for where, mask in flips if content else ():
        content[int(where * len(content))] ^= mask
    path, read = place(tmp_path_factory.mktemp("damaged"), kind, bytes(content))
    reads_or_fails_cleanly(read, path)


@PROPERTY
@given(st.text(alphabet='0123456789.,-e\n\r" abely', max_size=80))
def test_csv_like_text_fails_cleanly(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("text") / "t.csv"
    path.write_text(text)
    reads_or_fails_cleanly(load_csv, path)


ODD_DTYPES = st.one_of(
    scalar_dtypes(), st.sampled_from([np.dtype("U3"), np.dtype("S2"), np.dtype([("a", "i4"), ("b", "f8")])])
)


@PROPERTY
@given(
    x=arrays(ODD_DTYPES, array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)),
    y=st.none() | arrays(ODD_DTYPES, array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5)),
    layout=st.sampled_from(["X", "x", "train"]),
)
def test_odd_arrays_fail_cleanly(tmp_path_factory, x, y, layout):
    path = tmp_path_factory.mktemp("odd") / "odd.npz"
    labels = {} if y is None else {"y_train" if layout == "train" else "y": y}
    np.savez(path, **{layout: x}, **({"test": x[:1] if x.ndim else x} if layout == "train" else {}), **labels)
    try:
        data = load_npz(path)
    except CLEAN_ERRORS as error:
        assert_named(error, path)
    else:
        assert data.train_x.dtype == torch.float32 and data.train_x.dim() in (2, 4)
