"""The detector as scikit-learn's and PyOD's users call it, and the inputs that used to fool it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from pyro_vae.novelty import NoveltyDetector

QUICK = {"members": 1, "steps": 5, "num_samples": 4, "random_state": 0}


@parametrize_with_checks([NoveltyDetector(**QUICK)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def table(rows: int, seed: int, columns: int = 4) -> np.ndarray:
    loadings = np.random.default_rng(0).normal(size=(2, columns))
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 2)) @ loadings + 0.1 * rng.normal(size=(rows, columns))


@pytest.fixture(scope="module")
def fitted() -> NoveltyDetector:
    return NoveltyDetector(members=1, steps=200, num_samples=16, random_state=0).fit(table(400, seed=1))


def test_a_rows_score_does_not_depend_on_the_other_rows(fitted):
    rows = table(300, seed=2)
    full = fitted.score_samples(rows)
    order = np.random.default_rng(3).permutation(300)
    assert np.array_equal(fitted.score_samples(rows[order]), full[order])
    assert np.array_equal(
        np.concatenate([fitted.score_samples(rows[i : i + 1]) for i in (0, 123, 299)]), full[[0, 123, 299]]
    )
    assert np.array_equal(fitted.score_samples(rows[::-1]), full[::-1])  # a negative stride, accepted
    assert np.array_equal(fitted.score_samples(np.asfortranarray(rows)), full)


def test_pipeline_clone_grid_search_and_cross_validation():
    train = table(200, seed=4)
    pipeline = make_pipeline(StandardScaler(), NoveltyDetector(**QUICK)).fit(train)
    assert pipeline.score_samples(train).shape == (200,) and set(pipeline.predict(train)) <= {-1, 1}
    twin = clone(NoveltyDetector(**QUICK, contamination=0.2))
    assert twin.get_params()["contamination"] == 0.2 and not hasattr(twin, "offset_")

    def mean_score(estimator, X, y=None):
        return float(estimator.score_samples(X).mean())

    search = GridSearchCV(NoveltyDetector(**QUICK), {"tail": [3.0, 5.0]}, scoring=mean_score, cv=2).fit(train)
    assert search.best_params_["tail"] in (3.0, 5.0)
    assert cross_val_score(NoveltyDetector(**QUICK), train, scoring=mean_score, cv=2).shape == (2,)


def test_data_frames_keep_their_column_names_and_types():
    frame = pd.DataFrame(table(120, seed=5), columns=list("abcd"))
    detector = NoveltyDetector(**QUICK).fit(frame)
    assert list(detector.feature_names_in_) == list("abcd")
    with pytest.raises(ValueError, match="Feature names"):
        detector.score_samples(frame[list("badc")])
    nullable = frame.assign(a=pd.array(np.arange(120), dtype="Int64"))
    NoveltyDetector(**QUICK).fit(nullable)
    nullable.loc[7, "a"] = pd.NA
    with pytest.raises(ValueError, match=r"NaN.*rows \[7\] and columns \[0\]"):
        NoveltyDetector(**QUICK).fit(nullable)
    categories = frame.assign(e=pd.Categorical(np.arange(120) % 3))
    assert NoveltyDetector(**QUICK).fit(categories).n_features_in_ == 5
    text = frame.assign(colour=pd.Categorical(np.where(np.arange(120) % 2, "red", "blue")), note="x")
    with pytest.raises(TypeError, match=r"columns \['colour', 'note'\].*OneHotEncoder"):
        NoveltyDetector(**QUICK).fit(text)


def test_training_data_with_nothing_to_learn_are_refused():
    with pytest.raises(ValueError, match="no informative column"):
        NoveltyDetector(**QUICK).fit(np.ones((50, 3)))
    with pytest.raises(ValueError, match="0 feature"):
        NoveltyDetector(**QUICK).fit(np.ones((50, 0)))


def watched_table(rows: int, seed: int) -> np.ndarray:
    """Two informative columns, a binary one (levels 0 and 1) and a constant one (3.0)."""
    base = table(rows, seed, columns=2)
    return np.hstack([base, (base[:, :1] > 0).astype(float), np.full((rows, 1), 3.0)])


@pytest.fixture(scope="module")
def watcher() -> NoveltyDetector:
    return NoveltyDetector(members=1, steps=200, num_samples=16, random_state=0).fit(watched_table(400, seed=6))


@pytest.mark.parametrize(("column", "values"), [(3, [3.0, 3.001, 4.0, 1e6]), (2, [1.0, 1.5, 3.0, 1000.0])])
def test_binary_and_constant_columns_keep_watching(watcher, column, values):
    """A value the column never took in training lowers the score, the more the further it lies."""
    row = watched_table(1, seed=7)
    row[0, 2] = 1.0
    rows = np.repeat(row, len(values), axis=0)
    rows[:, column] = values
    scores = watcher.score_samples(rows)
    assert np.all(np.diff(scores) < 0), scores


def test_every_finite_row_gets_a_finite_score_lower_the_further_out(watcher):
    rows = np.repeat(watched_table(1, seed=8), 6, axis=0)
    rows[:, 0] = [0.0, 1e3, 1e10, 1e30, 1e39, 1e300]
    scores = watcher.score_samples(rows)
    assert np.isfinite(scores).all() and np.all(np.diff(scores) < 0), scores


def test_a_few_huge_training_values_do_not_stretch_the_scale():
    """A column holding 1e20 in 5 % of the training rows: -1e5 is still far out."""
    train = table(400, seed=9)
    train[::20, 1] = 1e20
    detector = NoveltyDetector(members=1, steps=200, num_samples=16, random_state=0).fit(train)
    inliers = table(100, seed=10)
    outlier = inliers[:1].copy()
    outlier[0, 1] = -1e5
    assert detector.score_samples(outlier)[0] < detector.score_samples(inliers).min()


def test_pyod_conventions():
    pyod = pytest.importorskip("pyod")
    from pyod.utils.data import evaluate_print

    from pyro_vae.pyod_detector import PyODNoveltyDetector

    assert pyod.__version__
    rng = np.random.default_rng(11)
    train = table(300, seed=11)
    test = np.vstack([table(100, seed=12), table(10, seed=13) + 4 * rng.normal(size=(10, 4))])
    labels = np.r_[np.zeros(100), np.ones(10)]
    detector = PyODNoveltyDetector(members=1, steps=200, num_samples=16, random_state=0).fit(train)
    assert np.array_equal(detector.decision_scores_, -detector.train_scores_)  # row order, higher = abnormal
    assert np.array_equal(detector.labels_, (detector.decision_scores_ > detector.threshold_).astype(int))
    assert abs(detector.labels_.mean() - 0.1) < 0.02
    scores = detector.decision_function(test)
    assert roc_auc_score(labels, scores) > 0.95  # PyOD's orientation: outliers score higher
    predicted = detector.predict(test)
    assert set(np.unique(predicted)) <= {0, 1} and predicted[labels == 1].mean() > 0.8
    probability = detector.predict_proba(test)
    assert probability.shape == (110, 2) and np.allclose(probability.sum(1), 1)
    assert detector.predict_confidence(test).shape == (110,)
    assert np.array_equal(detector.fit_predict(train), detector.labels_)
    evaluate_print("pyro_vae", labels, scores)  # PyOD's own evaluation helper takes it


def test_float32_copies_of_the_training_levels_are_on_them():
    """A binary column {0.1, 0.7} and a constant 0.3, scored as float32 or as 0.1 + 0.2: no new value."""
    train = np.hstack([table(60, seed=14, columns=2), np.tile([[0.1], [0.7]], (30, 1)), np.full((60, 1), 0.3)])
    detector = NoveltyDetector(**QUICK).fit(train)
    rounded = train.copy()
    rounded[:, 3] = 0.1 + 0.2
    assert np.allclose(detector.score_samples(train.astype(np.float32)), detector.score_samples(train), atol=1e-3)
    assert np.array_equal(detector.score_samples(rounded), detector.score_samples(train))


def test_parameters_a_grid_search_produces_train_and_save(tmp_path):
    """NumPy scalars and arrays (np.arange grids), the largest seed with several members."""
    detector = NoveltyDetector(
        members=np.int64(2), steps=np.int64(5), num_samples=np.int64(4), latent_dim=np.int64(2),
        hidden=np.array([16, 8]), lr=np.float32(1e-3), random_state=2**32 - 1,
    ).fit(table(50, seed=15))  # fmt: skip
    loaded = NoveltyDetector.load(detector.save(tmp_path / "detector.pt"))
    assert np.array_equal(loaded.score_samples(table(5, seed=16)), detector.score_samples(table(5, seed=16)))
    for hidden in ([0], [2.7], [-3]):
        with pytest.raises(ValueError, match="positive integer layer widths"):
            NoveltyDetector(**QUICK, hidden=hidden).fit(table(50, seed=15))


def test_columns_spanning_the_whole_float64_range_score_finite():
    train = table(40, seed=17)
    train[:20, 0], train[20:, 0] = -1.7e308, 1.7e308  # binary, levels 3.4e308 apart
    train[:, 1] = np.resize([-1.7e308, 0.0, 1.7e308], 40)  # three values, an interquartile range beyond float64
    scores = NoveltyDetector(**QUICK).fit(train).score_samples(train)
    assert np.isfinite(scores).all()


def test_data_frames_with_integer_names_and_object_numbers():
    frame = pd.DataFrame(table(60, seed=18))  # column names 0..3
    frame[4] = pd.Categorical(np.arange(60) % 3)
    frame[5] = pd.Series(np.linspace(0, 1, 60), dtype=object)
    assert NoveltyDetector(**QUICK).fit(frame).n_features_in_ == 6
    with pytest.raises(ValueError, match="repeated column names"):
        NoveltyDetector(**QUICK).fit(frame.set_axis([0, 1, 2, 3, 4, 0], axis=1))
    frame[4] = pd.Categorical([np.nan, *(np.arange(59) % 3)])
    with pytest.raises(ValueError, match=r"NaN.*rows \[0\] and columns \[4\]"):
        NoveltyDetector(**QUICK).fit(frame)


def test_a_loaded_pyod_detector_keeps_pyods_attributes(tmp_path):
    pytest.importorskip("pyod")
    from pyro_vae.pyod_detector import PyODNoveltyDetector

    detector = PyODNoveltyDetector(**QUICK).fit(table(80, seed=19))
    loaded = PyODNoveltyDetector.load(detector.save(tmp_path / "detector.pt"))
    assert np.array_equal(loaded.decision_scores_, detector.decision_scores_)
    assert loaded.threshold_ == detector.threshold_ and np.array_equal(loaded.labels_, detector.labels_)
    rows = table(10, seed=20)
    assert np.array_equal(loaded.predict(rows), detector.predict(rows))
    assert np.array_equal(loaded.predict_proba(rows), detector.predict_proba(rows))
