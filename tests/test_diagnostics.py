"""Pareto-k̂ of the importance weights: small for a good proposal, large for a bad one."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae.diagnostics import (
    UNRELIABLE_K,
    importance_scores,
    pareto_k,
    reliable_k,
    to_inference_data,
    unreliable_cut,
)
from tests.test_scoring import PPCA, SIGMA


def scaled_posterior(ppca: PPCA, factor: float):
    """The exact PPCA posterior with its standard deviations multiplied by ``factor``."""

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            loc = (x - ppca.b) @ ppca.W @ ppca.M_inv.T
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=(factor * SIGMA) ** 2 * ppca.M_inv))

    return guide


@pytest.fixture(scope="module")
def ppca() -> PPCA:
    return PPCA()


def test_a_wide_proposal_is_reliable_and_a_narrow_one_is_flagged(ppca):
    x = ppca.sample(100, seed=2)
    wide = importance_scores(ppca.model, scaled_posterior(ppca, 1.5), x, num_samples=1000)
    narrow = importance_scores(ppca.model, scaled_posterior(ppca, 0.25), x, num_samples=1000)
    assert wide.pareto_k.max() < 0.5 and not wide.unreliable.any()
    assert narrow.unreliable.mean() > 0.5  # over-confident q: heavy-tailed weights
    assert np.median(narrow.pareto_k) > UNRELIABLE_K
    # The narrow proposal's estimate is biased low; k̂ is what warns about it.
    exact = ppca.log_px(x).numpy()
    assert abs(wide.log_likelihood - exact).mean() < 0.03
    assert (narrow.log_likelihood - exact).mean() < -0.1


def test_equal_weights_count_as_exact(ppca):
    x = ppca.sample(20, seed=3)
    scores = importance_scores(ppca.model, ppca.exact_guide, x, num_samples=200)
    assert np.all(scores.pareto_k == -np.inf)
    assert not scores.unreliable.any()


def test_scores_match_log_likelihood(ppca):
    x = ppca.sample(30, seed=4)
    guide = scaled_posterior(ppca, 0.8)
    pyro.set_rng_seed(5)
    expected = pyro_vae.log_likelihood(ppca.model, guide, x, num_samples=64).numpy()
    pyro.set_rng_seed(5)
    scores = importance_scores(ppca.model, guide, x, num_samples=64)
    assert np.allclose(scores.log_likelihood, expected, atol=1e-10)
    assert scores.pareto_k.shape == (30,)


def test_pareto_k_wants_particles_by_data():
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        pareto_k(torch.zeros(10))


def test_too_few_particles_give_no_k_rather_than_a_false_alarm():
    log_w = torch.randn(20, 7, generator=torch.Generator().manual_seed(0))
    assert np.isnan(pareto_k(log_w)).all()
    assert np.isfinite(pareto_k(torch.cat([log_w, log_w[:1] + 0.5]))).all()


def test_inference_data_round_trips_through_netcdf(tmp_path):
    arviz = pytest.importorskip("arviz")
    per_datum = {"log_likelihood": np.array([-1.0, -5.0, -2.5]), "pareto_k": np.array([0.1, 0.9, 0.3])}
    path = tmp_path / "scores.nc"
    to_inference_data(per_datum, threshold=-4.0).to_netcdf(str(path))
    loaded = arviz.from_netcdf(str(path)).novelty
    assert loaded.attrs["threshold"] == -4.0
    assert np.array_equal(loaded["pareto_k"].values.ravel(), per_datum["pareto_k"])
    assert loaded["log_likelihood"].dims == ("chain", "draw", "datum")


def test_the_k_hat_cut_off_follows_the_number_of_weights():
    assert reliable_k(100) == pytest.approx(0.5)
    assert reliable_k(1000) == pytest.approx(2 / 3)
    assert reliable_k(10**6) == UNRELIABLE_K  # capped at 0.7


def test_beside_a_reference_the_cut_is_the_references_99th_percentile_when_that_is_higher():
    assert unreliable_cut(100) == reliable_k(100)
    well_fitted = np.linspace(-0.2, 0.3, 101)  # every reference estimate reliable: the absolute cut stays
    assert unreliable_cut(100, well_fitted) == reliable_k(100)
    heavy = np.linspace(0.8, 1.8, 101)
    assert unreliable_cut(100, np.r_[heavy, np.nan]) == pytest.approx(1.79)  # a value of the reference; NaN left out
    degenerate = np.r_[heavy[:97], np.inf, np.inf, np.inf]  # weights overflowing: the least reliable of all
    assert unreliable_cut(100, degenerate) == np.inf
    assert unreliable_cut(100, np.array([np.nan, np.nan])) == reliable_k(100)
