"""A novelty detector in scikit-learn's conventions, scoring by the model's own evidence.

``NoveltyDetector`` is a scikit-learn outlier detector (``OutlierMixin`` on ``BaseEstimator``:
keyword-only parameters checked by ``_parameter_constraints``, ``validate_data``,
``check_is_fitted``; ``check_estimator`` passes, ``tests/test_novelty_conventions.py``). It fits
VAEs to tabular data and scores new rows by the importance-sampled log p(x) of
:mod:`pyro_vae.scoring`: higher is more normal, as in scikit-learn's ``score_samples``.
``offset_`` is the ``contamination`` quantile of the training scores, so
``decision_function(X) = score_samples(X) - offset_`` is negative for outliers and ``predict``
flags about a ``contamination`` fraction of the training data with -1 (scikit-learn's
``IsolationForest`` and ``LocalOutlierFactor(novelty=True)`` semantics). PyOD's signs are in
:mod:`pyro_vae.pyod_detector`.

Preprocessing (:mod:`pyro_vae.table_preprocessing`) is fitted on the training data and kept with
the detector: robust standardization with a logarithmic tail, binary columns for a Bernoulli
likelihood, constant ones left out; binary and constant columns keep watching for values they
never took. The others get a Student-t with learned location and scale (heavy tails keep a few
extreme training rows from dominating the fit). The score is a log-density of the original
columns: the model's, plus what the preprocessing adds (its log-Jacobian and the watched levels).

The score is the mean of the log p(x) of ``members`` VAEs (different seeds), each trained for a
short budget of ``steps`` minibatch steps. Training data for novelty detection usually holds some
outliers; the longer a VAE trains, the more density it gives them. A short budget leaves each
model's log p(x) noisier, which the average over members reduces. The average of
log-likelihoods is the log of the members' geometric-mean density, up to a constant: still a
likelihood score, with no labels, distances or reconstruction errors involved. Every row gets the
same importance-sampling noise (:mod:`pyro_vae.common_noise`), so its score is bit-identical
whether it is scored alone, in a batch or in another order.

Each score comes with the Pareto-k̂ of its importance weights (:mod:`pyro_vae.diagnostics`) and
an empirical tail probability against the training scores; :meth:`NoveltyDetector.save` and
:meth:`NoveltyDetector.load` keep a fitted detector in one checkpoint file that loads without
running code.

This module is an application built from stock parts, above the core: it builds its members
from :class:`pyro_vae.models.VAE` and :class:`pyro_vae.guides.AmortizedNormal`, as the command
line (:mod:`pyro_vae.cli`) builds its runs, so the core (every other module of ``pyro_vae``
but ``__main__``) imports neither it nor the stock parts. It stays at ``pyro_vae.novelty``, and
``from pyro_vae import NoveltyDetector`` imports it on first use (``pyro_vae.__getattr__``);
``tests/test_layering.py`` holds both layers to that.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyro
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.device import resolve_device
from pyro_vae.diagnostics import ImportanceScores, importance_scores
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.resume import rng_state, set_rng_state
from pyro_vae.scoring import log_likelihood
from pyro_vae.table_preprocessing import TAIL, TablePreprocessor
from pyro_vae.training import History, fit
from pyro_vae.validation import check_data

DETECTOR_KIND = "novelty-detector"
PARAMETERS = (
    "members",
    "steps",
    "trim",
    "tail",
    "duplicates",
    "latent_dim",
    "hidden",
    "epochs",
    "batch_size",
    "lr",
    "num_samples",
    "contamination",
    "df",
    "random_state",
    "device",
    "progress",
)
_POSITIVE = Interval(Integral, 1, None, closed="left")
DIAGNOSTIC_SAMPLES = 100  # importance weights per row that the Pareto-k̂ is fitted to, at least


def empirical_tail_probability(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{reference ≤ s}) / (n + 1) for every score s; ``reference`` sorted ascending."""
    below = np.searchsorted(reference, np.asarray(scores, dtype=np.float64), side="right")
    return (1 + below) / (len(reference) + 1)


def _validation(rows: int) -> float:
    """The fraction of the training rows held out for early stopping (none for tiny tables)."""
    return 0.1 if rows >= 50 else 0.0


def split_by_distinct_rows(x: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(training rows, validation rows)``: about ``fraction`` of the rows of ``x`` held out,
    every copy of a row on the same side, so that with repeated rows (a small table resampled
    with replacement, say) the validation rows are rows the member never trained on and early
    stopping measures how well it generalizes, not how well it memorizes. Rows are taken in the
    order of ``torch.randperm`` seeded with ``seed``, as :func:`~pyro_vae.training.split_data`
    takes them, and a row's copies join it unless they would hold out more than twice the share:
    without repeated rows this is ``fit``'s own split, row for row. ``None`` when nothing can be
    held out that way."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    share = max(1, round(fraction * len(x)))
    _, groups = np.unique(x.numpy(), axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    counts = np.bincount(groups)
    ordered = groups[order.numpy()]
    held, taken = np.zeros(len(counts), dtype=bool), 0
    for group in ordered[np.sort(np.unique(ordered, return_index=True)[1])]:  # by first appearance
        if taken >= share:
            break
        if taken + counts[group] <= 2 * share:
            held[group], taken = True, taken + counts[group]
    if taken == 0 or held.all():
        return x, None
    in_validation = torch.from_numpy(held[ordered])
    return x[order[~in_validation]], x[order[in_validation]]


def numeric_frame(X):
    """A pandas DataFrame with every column numeric (categorical columns of numbers become floats,
    object columns of numbers their numbers); columns that hold text or other objects, and
    repeated column names, are named in the error. Anything else is returned as it is."""
    if not type(X).__module__.startswith("pandas") or not hasattr(X, "columns"):
        return X
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    repeated = X.columns[X.columns.duplicated()].unique().tolist()
    if repeated:
        raise ValueError(f"X has repeated column names {repeated[:5]}; give every column its own name")
    frame, refused = X.copy(), []
    for position, name in enumerate(X.columns):
        column = X.iloc[:, position]
        categories = getattr(column.dtype, "categories", None)
        if categories is not None and is_numeric_dtype(categories.dtype):
            frame[name] = column.astype(np.float64)
        elif column.dtype == object:
            converted = pd.to_numeric(column, errors="coerce")
            if converted.isna().sum() > column.isna().sum():
                refused.append(name)
            frame[name] = converted
        elif not (is_numeric_dtype(column.dtype) or is_bool_dtype(column.dtype)):
            refused.append(name)
    if refused:
        raise TypeError(
            f"columns {refused[:5]} of X are not numeric ({', '.join(str(X[n].dtype) for n in refused[:5])}); "
            "encode them first, e.g. with sklearn.preprocessing.OneHotEncoder in a Pipeline"
        )
    return frame


def _widths(hidden) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive integer layer widths."""
    widths = tuple(hidden)
    if not widths or any(int(width) != width or width < 1 for width in widths):
        raise ValueError(f"hidden must be positive integer layer widths, e.g. (64, 32); got {hidden!r}")
    return tuple(int(width) for width in widths)


def _plain(value):
    """A parameter as JSON can store it: NumPy scalars and arrays become Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple, list)):
        return [_plain(item) for item in value]
    return value


class NoveltyDetector(OutlierMixin, BaseEstimator):
    """VAE novelty detector for tables, a scikit-learn outlier detector (``check_estimator``
    passes) scoring rows by the model's importance-sampled log p(x).

    :param int members: number of VAEs (seeds) whose log p(x) is averaged.
    :param int steps: minibatch steps each member trains for (rounded up to whole epochs).
    :param float trim: the fraction of training rows with the lowest log p(x) that each member
        leaves out of the second half of its training (``0``: none); see :meth:`fit`.
    :param float tail: standardized values beyond ±``tail`` are compressed logarithmically
        (:mod:`pyro_vae.table_preprocessing`).
    :param str duplicates: ``"drop"`` fits the VAEs to the distinct training rows (a row repeated
        k times counts once), ``"keep"`` to every row.
    :param latent_dim: dimension of z (default: half the columns, between 2 and 32).
    :param hidden: hidden layer widths (default: twice the columns, between 64 and 512, then half).
    :param epochs: passes over the data, overriding ``steps``.
    :param int batch_size: minibatch size.
    :param float lr: Adam learning rate.
    :param int num_samples: importance samples K per row for ``score_samples``.
    :param float contamination: the expected fraction of outliers in the training data; sets
        ``offset_``.
    :param df: degrees of freedom of the Student-t for continuous columns (``None``: Gaussian).
    :param random_state: seed (an int, a ``numpy.random.RandomState`` or ``None``) for the
        networks, training and scoring; the global generators are left as they were.
    :param str device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param progress: show progress bars (``None``: only on a terminal).

    After :meth:`fit`: ``train_scores_`` (the training rows' scores, in row order), ``offset_``,
    ``n_features_in_`` (and ``feature_names_in_`` for a DataFrame), ``preprocessor_``,
    ``models_``, ``guides_``, ``seed_`` and ``history_[m]``, the
    :class:`~pyro_vae.training.History` of each training phase of member ``m``.
    """

    _parameter_constraints: ClassVar[dict] = {
        "members": [_POSITIVE],
        "steps": [_POSITIVE],
        "trim": [Interval(Real, 0, 1, closed="left")],
        "duplicates": [StrOptions({"keep", "drop"})],
        "tail": [Interval(Real, 1, None, closed="left")],
        "latent_dim": [_POSITIVE, None],
        "hidden": ["array-like", None],
        "epochs": [_POSITIVE, None],
        "batch_size": [_POSITIVE],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "num_samples": [_POSITIVE],
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
        "df": [Interval(Real, 0, None, closed="neither"), None],
        "random_state": ["random_state"],
        "device": [StrOptions({"cpu", "cuda", "auto"}), str],
        "progress": ["boolean", None],
    }

    def __init__(
        self,
        *,
        members: int = 4,
        steps: int = 250,
        trim: float = 0.1,
        tail: float = TAIL,
        duplicates: str = "keep",
        latent_dim: int | None = None,
        hidden: tuple[int, ...] | None = None,
        epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        num_samples: int = 16,
        contamination: float = 0.1,
        df: float | None = 4.0,
        random_state: int | np.random.RandomState | None = None,
        device: str = "cpu",
        progress: bool | None = False,
    ) -> None:
        self.members = members
        self.steps = steps
        self.trim = trim
        self.tail = tail
        self.duplicates = duplicates
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.num_samples = num_samples
        self.contamination = contamination
        self.df = df
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    def _sizes(self, rows: int, columns: int) -> tuple[int, tuple[int, ...], int]:
        latent = int(self.latent_dim or min(32, max(2, columns // 2)))
        width = min(512, max(64, 2 * columns))
        hidden = _widths(self.hidden) if self.hidden is not None else (width, max(32, width // 2))
        steps_per_epoch = math.ceil(rows * (1 - _validation(rows)) / self.batch_size)
        epochs = self.epochs or math.ceil(self.steps / steps_per_epoch)
        return latent, hidden, epochs

    def _table(self, X, reset: bool) -> np.ndarray:
        """``X`` checked as scikit-learn checks it (float64, 2-D, feature names and count), with
        NaN and infinite values named by row and column."""
        array = validate_data(self, numeric_frame(X), reset=reset, dtype=np.float64, order="C", ensure_all_finite=False)
        array = array if array.flags.writeable else array.copy()  # torch takes no read-only memory
        check_data(torch.from_numpy(array), "X")
        return array

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> NoveltyDetector:
        """Fit the preprocessing and the VAEs to ``X`` (``y`` is ignored: unsupervised).

        Each member trains on all rows for the first half of its epochs; then, with ``trim``, it
        estimates log p(x) of every training row (K = 10) and trains the second half on the
        ``1 - trim`` share of rows that score highest (a fresh optimizer; at least 2 epochs are
        needed, else no trimming): a trimmed likelihood, as robust estimators such as the
        minimum covariance determinant fit the bulk of the data and not its outliers.
        """
        table = self._table(X, reset=True)
        if table.shape[0] < 2:
            raise ValueError(f"X has 1 sample; a detector needs at least 2 training rows (got shape {table.shape})")
        self.preprocessor_ = TablePreprocessor(self.tail).fit(torch.from_numpy(table))
        view, log_density = self.preprocessor_.transform(torch.from_numpy(table))
        fitted = view[np.sort(np.unique(table, axis=0, return_index=True)[1])] if self.duplicates == "drop" else view
        latent, hidden, epochs = self._sizes(*fitted.shape)
        random_state = self.random_state
        self.seed_ = (
            random_state if isinstance(random_state, Integral) else check_random_state(random_state).randint(2**31)
        )
        self.latent_dim_, self.hidden_ = latent, hidden
        outside = rng_state()  # each member is seeded; the caller's generators are left as they were
        try:
            self._fit_members(fitted, epochs, self.seed_)
        finally:
            set_rng_state(outside)
        self.train_scores_ = self._score_view(view, log_density).log_likelihood
        self.offset_ = float(np.quantile(self.train_scores_, self.contamination))
        return self

    def _fit_members(self, x: torch.Tensor, epochs: int, seed: int) -> None:
        """Build and train the members, member ``m`` seeded with ``(seed + m) mod 2**32``."""
        validation = _validation(len(x)) or None
        self.models_, self.guides_, self.history_ = nn.ModuleList(), nn.ModuleList(), []
        for member in range(self.members):
            member_seed = (seed + member) % 2**32
            pyro.set_rng_seed(member_seed)
            model, guide = self._build_member()
            self.history_.append(self._train_member(model, guide, x, epochs, validation, member_seed))
            self.models_.append(model)
            self.guides_.append(guide)

    def _train_member(
        self, model: VAE, guide: AmortizedNormal, x: torch.Tensor, epochs: int, validation: float | None, seed: int
    ) -> list[History]:
        """Train one member (see :meth:`fit`); the histories of its one or two phases."""

        def train(rows: torch.Tensor, phase_epochs: int) -> History:
            rows, held_out = split_by_distinct_rows(rows, validation, seed) if validation else (rows, None)
            return fit(
                model,
                guide,
                rows,
                epochs=phase_epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                validation=held_out,
                patience=max(10, epochs // 10) if held_out is not None else None,
                device=self.device,
                seed=seed,
                progress=self.progress,
            )

        if not self.trim or epochs < 2:
            return [train(x, epochs)]
        first = train(x, epochs // 2)
        log_px = log_likelihood(model, guide, x.to(next(model.parameters()).device), num_samples=10).cpu()
        keep = len(x) - math.floor(self.trim * len(x))  # by rank, so that ties (duplicate rows) cannot empty it
        kept = x[log_px.argsort(descending=True)[:keep].sort().values]
        return [first, train(kept, epochs - epochs // 2)]

    def _build_member(self) -> tuple[VAE, AmortizedNormal]:
        columns = int(self.preprocessor_.keep.sum())
        binary = self.preprocessor_.binary.tolist()
        shape, latent, hidden = (columns,), self.latent_dim_, self.hidden_
        model = VAE.build(shape, latent, hidden, "mlp", "mixed", binary=binary, df=self.df)
        return model, AmortizedNormal.build(shape, latent, hidden, "mlp")

    def _score(self, table: np.ndarray, diagnostics: bool = False) -> ImportanceScores:
        """The members' mean log p(x) of the rows of ``table``, plus the preprocessing's
        log-density. Every row gets the same noise draws (``common_noise``), so a row's score does
        not depend on the other rows in the call or their order. With ``diagnostics``, also the
        largest of the members' Pareto-k̂ (the least reliable estimate in the mean), fitted to
        max(K, ``DIAGNOSTIC_SAMPLES``) weights per row (PSIS needs at least 21); else NaN."""
        return self._score_view(*self.preprocessor_.transform(torch.from_numpy(table)), diagnostics)

    def _score_view(self, view: torch.Tensor, log_density: torch.Tensor, diagnostics: bool = False) -> ImportanceScores:
        """:meth:`_score` of rows already through the preprocessing (its view and log-density)."""
        view = view.to(next(self.models_.parameters()).device)
        log_px, pareto_k = [], []
        diagnostic_samples = max(self.num_samples, DIAGNOSTIC_SAMPLES)
        for model, guide in zip(self.models_, self.guides_, strict=True):
            log_px.append(
                log_likelihood(model, guide, view, num_samples=self.num_samples, common_noise=self.seed_)
                .cpu().double().numpy()
            )  # fmt: skip
            if diagnostics:
                weights = importance_scores(model, guide, view, num_samples=diagnostic_samples, common_noise=self.seed_)
                pareto_k.append(weights.pareto_k)
        worst_k = np.max(pareto_k, axis=0) if diagnostics else np.full(len(view), np.nan)
        log_px = np.mean(log_px, axis=0) + log_density.numpy()
        return ImportanceScores(log_px, worst_k, diagnostic_samples if diagnostics else self.num_samples)

    def score_with_diagnostics(self, X) -> ImportanceScores:
        """:meth:`score_samples` of every row with the Pareto-k̂ of the importance weights behind
        it (fitted to max(K, 100) weights; ``num_samples`` of the result is that number)."""
        check_is_fitted(self)
        return self._score(self._table(X, reset=False), diagnostics=True)

    def score_samples(self, X) -> np.ndarray:
        """Importance-sampled log p(x) of every row (a density of the original columns, see
        :mod:`pyro_vae.table_preprocessing`): higher is more normal."""
        check_is_fitted(self)
        return self._score(self._table(X, reset=False)).log_likelihood

    def tail_probability(self, scores: np.ndarray) -> np.ndarray:
        """The empirical probability that a training row scores at most ``scores`` (outputs of
        :meth:`score_samples`): (1 + #{training ≤ s}) / (n + 1). The model was fitted to those
        rows, so new inliers tend to score a little lower and get somewhat smaller values."""
        check_is_fitted(self)
        return empirical_tail_probability(np.sort(self.train_scores_), scores)

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for inliers, -1 for outliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector (parameters, preprocessing, training scores) to one
        checkpoint file, atomically."""
        check_is_fitted(self)
        parameters = {name: _plain(getattr(self, name)) for name in PARAMETERS} | {"random_state": int(self.seed_)}
        config = {
            "kind": DETECTOR_KIND,
            "parameters": parameters,
            "n_features_in": self.n_features_in_,
            "feature_names_in": [str(name) for name in getattr(self, "feature_names_in_", [])] or None,
            "latent_dim": self.latent_dim_,
            "hidden": list(self.hidden_),
            "offset": self.offset_,
        }
        arrays = {"train_scores": torch.as_tensor(self.train_scores_)}
        return save_checkpoint(path, self.models_, self.guides_, config, self.preprocessor_.state_dict(), arrays)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> NoveltyDetector:
        """Read a detector written by :meth:`save`; refuses files that are not detectors."""
        torch_device = resolve_device(device)
        checkpoint = load_checkpoint(path, map_location=torch_device)
        config = checkpoint.config
        if config.get("kind") != DETECTOR_KIND:
            raise ValueError(f"{path} is not a NoveltyDetector file (it holds a {config.get('kind', 'training run')})")
        preprocessor = TablePreprocessor.from_state_dict(checkpoint.preprocessing)
        parameters = config["parameters"]
        hidden = None if parameters["hidden"] is None else tuple(parameters["hidden"])
        detector = cls(**(parameters | {"device": str(torch_device), "hidden": hidden}))
        detector.n_features_in_, detector.seed_ = config["n_features_in"], parameters["random_state"]
        if config["feature_names_in"] is not None:
            detector.feature_names_in_ = np.asarray(config["feature_names_in"], dtype=object)
        detector.latent_dim_, detector.hidden_ = config["latent_dim"], tuple(config["hidden"])
        detector.preprocessor_ = preprocessor
        members = [detector._build_member() for _ in range(detector.members)]
        detector.models_ = nn.ModuleList(model for model, _ in members)
        detector.guides_ = nn.ModuleList(guide for _, guide in members)
        checkpoint.load_into(detector.models_, detector.guides_)
        detector.models_.to(torch_device).eval()
        detector.guides_.to(torch_device).eval()
        detector.train_scores_ = checkpoint.arrays["train_scores"].double().cpu().numpy()
        detector.offset_ = config["offset"]
        return detector
