"""NoveltyDetector: scikit-learn's novelty-detector semantics, real-table quirks, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from pyro_vae.novelty import NoveltyDetector, split_by_distinct_rows
from pyro_vae.table_preprocessing import TablePreprocessor
from pyro_vae.training import split_data


def messy_table(rows: int, seed: int) -> np.ndarray:
    """Correlated continuous columns on wildly different scales, a binary and a constant column."""
    loadings = np.random.default_rng(0).normal(size=(2, 4))  # the same structure for every sample
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 2))
    continuous = latent @ loadings + 0.1 * rng.normal(size=(rows, 4))
    continuous *= np.array([1e-3, 1.0, 1e3, 1e5])
    binary = (latent[:, :1] > 0).astype(float) * 7.0  # the two values 0 and 7
    constant = np.full((rows, 1), 3.0)
    return np.hstack([continuous, binary, constant])


@pytest.fixture(scope="module")
def fitted():
    detector = NoveltyDetector(members=2, contamination=0.05, epochs=40, num_samples=50, random_state=0)
    return detector.fit(messy_table(1000, seed=0))


def test_table_preprocessing_types_the_columns():
    table = messy_table(200, seed=1)
    preprocessor = TablePreprocessor().fit(torch_table(table))
    assert preprocessor.keep.tolist() == [True] * 5 + [False]
    assert preprocessor.binary.tolist() == [False] * 4 + [True]
    view, log_density = preprocessor.transform(torch_table(table))
    assert view.shape == (200, 5) and view.dtype == torch.float32 and log_density.shape == (200,)
    assert set(view[:, 4].unique().tolist()) == {0.0, 1.0}
    # Robust standardization: median 0, interquartile range that of a unit Gaussian.
    quartiles = np.quantile(view[:, :4].numpy(), [0.25, 0.5, 0.75], axis=0)
    assert np.allclose(quartiles[1], 0.0, atol=0.02) and np.allclose(quartiles[2] - quartiles[0], 1.349, atol=1e-3)


def torch_table(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float64)


def test_scikit_learn_semantics(fitted):
    train = messy_table(1000, seed=0)
    scores = fitted.score_samples(train)
    assert scores.shape == (1000,) and scores.dtype == np.float64
    assert np.allclose(fitted.decision_function(train), scores - fitted.offset_)
    predicted = fitted.predict(train)
    assert set(np.unique(predicted)) == {-1, 1}
    assert np.array_equal(predicted == -1, fitted.decision_function(train) < 0)
    # The threshold comes from the training scores: about `contamination` of them are flagged.
    assert abs((predicted == -1).mean() - 0.05) < 0.01


def test_outliers_score_lower(fitted):
    inliers = messy_table(300, seed=2)
    rng = np.random.default_rng(3)
    outliers = messy_table(30, seed=4)
    outliers[:, :4] += 2 * rng.normal(size=(30, 4)) * np.array([1e-3, 1.0, 1e3, 1e5])  # off the 2-D structure
    scores = fitted.score_samples(np.vstack([inliers, outliers]))
    labels = np.r_[np.zeros(300), np.ones(30)]
    assert roc_auc_score(labels, -scores) > 0.97  # 0.993 to 0.995 over seeds 0-3; IsolationForest 0.968


def test_same_random_state_same_scores():
    table = messy_table(300, seed=5)
    first = NoveltyDetector(epochs=5, num_samples=10, random_state=7).fit(table).score_samples(table[:50])
    second = NoveltyDetector(epochs=5, num_samples=10, random_state=7).fit(table).score_samples(table[:50])
    assert np.array_equal(first, second)


def test_fitting_leaves_the_callers_random_state_alone():
    """Each member is seeded with random_state + m; the global generators continue afterwards
    as if fit had not run (it once left them reseeded with the last member's seed)."""
    import random

    import torch

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    NoveltyDetector(members=2, epochs=1, num_samples=2, random_state=0, trim=0).fit(messy_table(60, seed=2))
    actual = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(actual[0], expected[0]) and np.array_equal(actual[1], expected[1])
    assert actual[2] == expected[2]


def test_bad_input_is_named(fitted):
    table = messy_table(100, seed=6)
    table[[3, 8], 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*rows \[3, 8\].*columns \[2\]"):
        NoveltyDetector().fit(table)
    with pytest.raises(ValueError, match="expecting 6 features"):
        fitted.score_samples(messy_table(10, seed=7)[:, :5])
    with pytest.raises(ValueError, match="could not convert string to float"):
        fitted.score_samples(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="2D array"):
        fitted.score_samples(np.zeros(6))
    with pytest.raises(NotFittedError, match="not fitted"):
        NoveltyDetector().predict(table)
    with pytest.raises(ValueError, match="contamination"):
        NoveltyDetector(contamination=0.7).fit(messy_table(100, seed=8))
    with pytest.raises(ValueError, match=r"infinite.*rows \[50\]"):
        fitted.score_samples(np.vstack([messy_table(50, seed=7), np.full((1, 6), -np.inf)]))


def test_save_and_load_give_the_same_detector(fitted, tmp_path):
    path = fitted.save(tmp_path / "detector.pt")
    loaded = NoveltyDetector.load(path)
    table = messy_table(50, seed=9)
    assert np.array_equal(loaded.score_samples(table), fitted.score_samples(table))
    assert loaded.offset_ == fitted.offset_ and loaded.contamination == fitted.contamination
    assert np.array_equal(loaded.predict(table), fitted.predict(table))


def test_loading_a_file_that_is_no_detector_is_refused(tmp_path):
    from pyro_vae.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "checkpoint.pt", None, None, {"dataset": "digits"})
    with pytest.raises(ValueError, match="not a NoveltyDetector"):
        NoveltyDetector.load(path)


def test_tail_probability_is_the_training_rank(fitted):
    train_scores = fitted.score_samples(messy_table(1000, seed=0))
    tail = fitted.tail_probability(train_scores)
    assert np.all((tail > 0) & (tail <= 1))
    order = np.argsort(train_scores)
    assert np.all(np.diff(tail[order]) >= 0)  # lower score, smaller tail probability
    assert abs((tail <= 0.05).mean() - 0.05) < 0.005  # uniform on the training data themselves
    assert fitted.tail_probability(np.array([-np.inf]))[0] == pytest.approx(1 / 1001)


def test_every_score_carries_its_pareto_k(fitted):
    """k̂ is fitted to max(K, 100) weights (PSIS needs 21; the default K is 16); the scores are
    score_samples' own."""
    rows = messy_table(40, seed=10)
    scores = fitted.score_with_diagnostics(rows)
    assert scores.pareto_k.shape == (40,) and np.isfinite(scores.pareto_k).all()
    assert scores.num_samples == 100 and fitted.num_samples == 50
    assert np.array_equal(scores.unreliable, scores.pareto_k > 1 - 1 / np.log10(100))  # 0.5 at K = 100
    assert np.array_equal(scores.log_likelihood, fitted.score_samples(rows))


def test_members_are_seeded_apart_and_their_log_likelihoods_averaged():
    """Member m of a detector with random_state s is the network a one-member detector with
    random_state s + m trains; the score is the mean of the members' log p(x) (up to the
    importance sampling noise of K = 400)."""
    import torch

    table = messy_table(300, seed=11)
    options = {"epochs": 5, "num_samples": 400}
    pair = NoveltyDetector(members=2, random_state=0, **options).fit(table)
    singles = [NoveltyDetector(members=1, random_state=seed, **options).fit(table) for seed in (0, 1)]
    for member, single in zip(pair.models_, singles, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(member.parameters(), single.models_[0].parameters(), strict=True))
    first, second = (single.score_samples(table) for single in singles)
    gap = np.abs(first - second).mean()  # 0.10 with this seed
    error = np.abs(pair.score_samples(table) - (first + second) / 2).mean()  # 0.023
    # Either member alone lies gap / 2 from the mean on average: the pair's score is the mean, not a member.
    assert error < 0.05 and error < gap / 3


def test_a_detector_file_of_the_old_preprocessing_is_refused_with_the_fix(fitted, tmp_path):
    from pyro_vae.checkpoint import load_checkpoint, save_checkpoint

    stored = load_checkpoint(fitted.save(tmp_path / "new.pt"))
    old_preprocessing = {"keep": stored.preprocessing["keep"], "binary": stored.preprocessing["binary"]}
    old = save_checkpoint(tmp_path / "old.pt", fitted.models_, fitted.guides_, stored.config, old_preprocessing)
    with pytest.raises(ValueError, match=r"earlier pyro_vae.*fit the detector again"):
        NoveltyDetector.load(old)


def test_trimming_keeps_a_cluster_of_training_outliers_from_getting_density():
    """A tight cluster of 100 outliers in 1,000 training rows: trained on everything, the VAE gives
    it density; leaving the lowest-log p(x) rows out of the second half of training does not."""
    rng = np.random.default_rng(5)
    scales = np.array([1e-3, 1.0, 1e3, 1e5])
    cluster = messy_table(100, seed=3)
    cluster[:, :4] = 5 * scales + 0.05 * scales * rng.normal(size=(100, 4))
    train = np.vstack([messy_table(900, seed=3), cluster])
    new_cluster = cluster[:50].copy()
    new_cluster[:, :4] += 0.01 * scales * rng.normal(size=(50, 4))
    test = np.vstack([messy_table(300, seed=4), new_cluster])
    labels = np.r_[np.zeros(300), np.ones(50)]
    aurocs = {}
    for trim in (0.0, 0.15):
        detector = NoveltyDetector(members=1, trim=trim, epochs=60, num_samples=20, random_state=0).fit(train)
        assert len(detector.history_[0]) == (2 if trim else 1)  # one history per training phase
        aurocs[trim] = roc_auc_score(labels, -detector.score_samples(test))
    assert aurocs[0.15] > 0.99
    # 1.000 against 0.993 with the robust, tail-compressing preprocessing (0.97 before it).
    assert aurocs[0.15] > aurocs[0.0]


def test_dropping_duplicates_fits_the_distinct_rows():
    """duplicates="drop" trains on each distinct row once: a table of rows repeated five times
    gives the networks the table of its distinct rows gives."""
    import torch

    distinct = messy_table(120, seed=13)
    repeated = np.repeat(distinct, 5, axis=0)
    options = {"members": 1, "steps": 20, "num_samples": 4, "random_state": 0, "trim": 0.0}
    dropped = NoveltyDetector(duplicates="drop", **options).fit(repeated)
    reference = NoveltyDetector(**options).fit(distinct)
    kept = NoveltyDetector(**options).fit(repeated)
    pairs = list(zip(dropped.models_.parameters(), reference.models_.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not all(
        torch.equal(a, b) for a, b in zip(kept.models_.parameters(), reference.models_.parameters(), strict=True)
    )
    assert dropped.train_scores_.shape == (600,)  # every training row is scored, in row order


def test_validation_rows_are_never_copies_of_training_rows():
    """A small table resampled with replacement: each member's held-out rows are rows it never
    trained on (early stopping then measures generalization, not memorization)."""
    distinct = torch.from_numpy(messy_table(130, seed=21)).float()
    resampled = distinct[torch.randint(130, (1000,), generator=torch.Generator().manual_seed(0))]
    training, held_out = split_by_distinct_rows(resampled, 0.1, seed=3)
    assert len(training) + len(held_out) == 1000 and 100 <= len(held_out) <= 200
    seen = {tuple(row.tolist()) for row in training}
    assert not any(tuple(row.tolist()) in seen for row in held_out)


def test_without_repeated_rows_the_split_is_fits_own():
    x = torch.from_numpy(messy_table(200, seed=22)).float()
    training, held_out = split_by_distinct_rows(x, 0.1, seed=7)
    (fit_training, _), (fit_held_out, _) = split_data(x, 0.1, seed=7)
    assert torch.equal(training, fit_training) and torch.equal(held_out, fit_held_out)


def test_a_table_of_one_repeated_row_holds_nothing_out():
    x = torch.ones(50, 3)
    training, held_out = split_by_distinct_rows(x, 0.1, seed=0)
    assert held_out is None and torch.equal(training, x)
