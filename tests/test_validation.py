"""Bad input gets a clear error before anything trains; property-based checks of the loaders and
the scoring API on random shapes, dtypes and values."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import pyro_vae
from pyro_vae.data import load_dataset
from pyro_vae.guides import ConditionalNormal
from pyro_vae.models import ConditionalVAE
from pyro_vae.validation import check_data, check_labels

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def gaussian_model(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[-1], dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def gaussian_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))  # the exact posterior


def test_fit_names_nan_rows_and_columns_before_training():
    x = torch.zeros(20, 4)
    x[[3, 7], 2] = float("nan")
    x[11, 0] = float("inf")
    with pytest.raises(ValueError, match=r"3 NaN or infinite values.*rows \[3, 7, 11\] and columns \[0, 2\]"):
        pyro_vae.fit(gaussian_model, gaussian_guide, x, epochs=1)


def test_fit_refuses_empty_integer_and_mismatched_data():
    with pytest.raises(ValueError, match="no data"):
        pyro_vae.fit(gaussian_model, gaussian_guide, torch.zeros(0, 3), epochs=1)
    with pytest.raises(TypeError, match=r"floating-point.*\.float\(\)"):
        pyro_vae.fit(gaussian_model, gaussian_guide, torch.ones(10, 3, dtype=torch.long), epochs=1)
    with pytest.raises(ValueError, match="one entry per datum"):
        pyro_vae.fit(gaussian_model, gaussian_guide, (torch.zeros(10, 3), torch.zeros(9)), epochs=1)


def test_labels_outside_the_classes_are_named(digits):
    model = ConditionalVAE.build(digits.x_shape, 10, 2, [8])
    guide = ConditionalNormal.build(digits.x_shape, 10, 2, [8])
    labels = digits.train_y.clone()
    labels[[5, 9]] = torch.tensor([10, -3])
    binary = (digits.train_x > 0.5).float()
    with pytest.raises(ValueError, match=r"labels \[-3, 10\].*rows \[5, 9\] of 1438\).*0\.\.9"):
        pyro_vae.fit(model, guide, (binary, labels), epochs=1, loss="enum")
    with pytest.raises(TypeError, match="integers"):
        check_labels(torch.zeros(4), 4, 10)


def test_data_outside_the_likelihoods_support_get_a_short_clear_error(digits):
    model = ConditionalVAE.build(digits.x_shape, 10, 2, [8], likelihood="bernoulli")
    guide = ConditionalNormal.build(digits.x_shape, 10, 2, [8])
    with pytest.raises(ValueError, match=r"outside the support.*Bernoulli.*binarize") as error:
        pyro_vae.fit(model, guide, (digits.train_x, digits.train_y), epochs=1)
    assert len(str(error.value)) < 400


def test_image_data_name_the_data_indices():
    images = torch.rand(6, 1, 4, 4)
    images[4, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[4\] \(counting from 0\);"):
        check_data(images)


def test_rows_are_named_by_the_callers_numbers():
    """A shuffled split names the rows of the file they came from, sorted."""
    table = torch.zeros(5, 3)
    table[[1, 4], 2] = float("-inf")
    with pytest.raises(ValueError, match=r"rows \[3, 50\] and columns \[2\]"):
        check_data(table, "the file", row_numbers=[7, 50, 9, 11, 3])


def test_complex_data_are_refused_not_cut_to_their_real_part():
    with pytest.raises(TypeError, match=r"imaginary parts would be lost.*view_as_real"):
        check_data(torch.ones(4, 2, dtype=torch.complex64))


@PROPERTY
@given(
    arrays(
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=st.tuples(st.integers(1, 30), st.integers(1, 6)),
        elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
    ),
    st.integers(1, 40),
)
def test_scores_are_finite_and_one_per_datum_for_any_finite_table(table, particles):
    x = torch.as_tensor(table)
    log_px = pyro_vae.log_likelihood(gaussian_model, gaussian_guide, x, num_samples=particles, max_batch=37)
    elbo = pyro_vae.elbo(gaussian_model, gaussian_guide, x, num_samples=2)
    assert log_px.shape == elbo.shape == (len(x),)
    assert log_px.dtype == x.dtype
    assert torch.isfinite(log_px).all() and torch.isfinite(elbo).all()
    # The guide is the exact posterior: every estimate is log p(x) = log N(x; 0, 2I).
    exact = dist.Normal(torch.zeros_like(x), math.sqrt(2)).log_prob(x).sum(-1)
    assert torch.allclose(log_px, exact, rtol=1e-4, atol=1e-3)


@PROPERTY
@given(
    arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int64]),
        shape=st.tuples(st.integers(1, 40), st.integers(1, 5)),
        elements=st.integers(-1000, 1000),
    ),
    st.booleans(),
    st.booleans(),
)
def test_csv_and_npz_round_trip_any_numeric_table(tmp_path_factory, table, header, with_labels):
    folder = tmp_path_factory.mktemp("tables")
    labels = np.arange(len(table)) % 3
    npz = folder / "t.npz"
    np.savez(npz, X=table, **({"y": labels} if with_labels else {}))
    csv = folder / "t.csv"
    columns = [f"c{i}" for i in range(table.shape[1])] + (["label"] if with_labels else [])
    body = np.column_stack([table, labels]) if with_labels else table
    lines = ([",".join(columns)] if header else []) + [",".join(str(value) for value in row) for row in body.tolist()]
    csv.write_text("\n".join(lines) + "\n")
    for spec in (f"npz:{npz}", f"csv:{csv}") if header or not with_labels else (f"npz:{npz}",):
        data = load_dataset(spec)
        x = torch.cat([data.train_x, data.test_x])
        assert x.dtype == torch.float32 and x.shape == table.shape
        assert sorted(map(tuple, x.tolist())) == sorted(map(tuple, table.astype(np.float32).tolist()))
        assert (data.train_y is not None) == with_labels
