"""A novelty detector with scikit-learn's conventions, scoring by the model's own evidence.

``NoveltyDetector`` fits a VAE to tabular data and scores new rows by the importance-sampled
log p(x) of :mod:`pyro_vae.scoring`: higher is more normal, as in scikit-learn's
``score_samples``. ``offset_`` is the ``contamination`` quantile of the training scores, so
``decision_function(X) = score_samples(X) - offset_`` is negative for outliers and ``predict``
flags about a ``contamination`` fraction of the training data with -1 (Breunig et al.'s and
scikit-learn's ``LocalOutlierFactor(novelty=True)`` semantics).

Preprocessing (:class:`~pyro_vae.preprocessing.TablePreprocessor`) is fitted on the training
data and kept with the detector: constant columns are dropped, binary columns get a Bernoulli
likelihood, the others are standardized and get a Student-t with learned location and scale
(heavy tails keep a few extreme training rows from dominating the fit).

The score is the mean of the log p(x) of ``members`` VAEs (different seeds), each trained for a
short budget of ``steps`` minibatch steps. Training data for novelty detection usually holds some
outliers; the longer a VAE trains, the more density it gives them, and on the ADBench tables a
short budget ranks the test outliers better (``docs/adbench_results.md``). A short budget leaves
each model's log p(x) noisier, which the average over members reduces. The average of
log-likelihoods is the log of the members' geometric-mean density, up to a constant: still a
likelihood score, with no labels, distances or reconstruction errors involved.

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
from pathlib import Path

import numpy as np
import pyro
import torch
from torch import nn

from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.device import resolve_device
from pyro_vae.diagnostics import ImportanceScores, importance_scores
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.preprocessing import TablePreprocessor
from pyro_vae.resume import rng_state, set_rng_state
from pyro_vae.scoring import log_likelihood
from pyro_vae.training import History, fit
from pyro_vae.validation import check_data

DETECTOR_KIND = "novelty-detector"
TRIM_DEFAULT = 0.1
PARAMETERS = (
    "members",
    "steps",
    "trim",
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


def empirical_tail_probability(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{reference ≤ s}) / (n + 1) for every score s; ``reference`` sorted ascending."""
    below = np.searchsorted(reference, np.asarray(scores, dtype=np.float64), side="right")
    return (1 + below) / (len(reference) + 1)


def _validation(rows: int) -> float:
    """The fraction of the training rows held out for early stopping (none for tiny tables)."""
    return 0.1 if rows >= 50 else 0.0


def _as_table(X, name: str = "X") -> torch.Tensor:
    array = np.asarray(X)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, columns), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    check_data(torch.as_tensor(array, dtype=torch.float64), name)
    return torch.as_tensor(array, dtype=torch.float32)


class NoveltyDetector:
    """VAE novelty detector for tables, in the manner of scikit-learn's novelty detectors.

    :param int members: number of VAEs (seeds) whose log p(x) is averaged.
    :param int steps: minibatch steps each member trains for (rounded up to whole epochs).
    :param latent_dim: dimension of z (default: half the columns, between 2 and 32).
    :param hidden: hidden layer widths (default: twice the columns, between 64 and 512, then half).
    :param epochs: passes over the data, overriding ``steps``.
    :param int batch_size: minibatch size.
    :param float lr: Adam learning rate.
    :param int num_samples: importance samples K per row for ``score_samples``.
    :param float contamination: the expected fraction of outliers in the training data; sets
        ``offset_``.
    :param df: degrees of freedom of the Student-t for continuous columns (``None``: Gaussian).
    :param random_state: seed for the networks, training and scoring (the global generators are
        left as they were; without it, fit draws a seed from torch's).
    :param str device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    :param float trim: the fraction of training rows with the lowest log p(x) that each member
        leaves out of the second half of its training (``0``: none); see :meth:`fit`.

    After :meth:`fit`, ``history_[m]`` holds the :class:`~pyro_vae.training.History` of each
    training phase of member ``m`` (two with ``trim``, else one).
    """

    def __init__(
        self,
        members: int = 5,
        steps: int = 500,
        latent_dim: int | None = None,
        hidden: tuple[int, ...] | None = None,
        epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        num_samples: int = 100,
        contamination: float = 0.1,
        df: float | None = 4.0,
        random_state: int | None = None,
        device: str = "cpu",
        progress: bool | None = False,
        trim: float = TRIM_DEFAULT,
    ) -> None:
        self.members = members
        self.steps = steps
        self.trim = trim
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

    def _sizes(self, rows: int, columns: int) -> tuple[int, tuple[int, ...], int]:
        latent = self.latent_dim or min(32, max(2, columns // 2))
        width = min(512, max(64, 2 * columns))
        hidden = self.hidden or (width, max(32, width // 2))
        steps_per_epoch = math.ceil(rows * (1 - _validation(rows)) / self.batch_size)
        epochs = self.epochs or math.ceil(self.steps / steps_per_epoch)
        return latent, tuple(hidden), epochs

    def fit(self, X, y=None) -> NoveltyDetector:
        """Fit the preprocessing and the VAEs to ``X`` (``y`` is ignored: unsupervised).

        Each member trains on all rows for the first half of its epochs; then, with ``trim``, it
        estimates log p(x) of every training row (K = 10) and trains the second half on the
        ``1 - trim`` share of rows that score highest (a fresh optimizer; at least 2 epochs are
        needed, else no trimming): a trimmed likelihood, as robust estimators such as the
        minimum covariance determinant fit the bulk of the data and not its outliers.
        """
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination}")
        if not 0 <= self.trim < 1:
            raise ValueError(f"trim must be in [0, 1), got {self.trim}")
        if self.members < 1 or self.steps < 1:
            raise ValueError(f"members and steps must be positive, got {self.members} and {self.steps}")
        x = _as_table(X)
        self.n_features_in_ = x.shape[1]
        self.preprocessor_ = TablePreprocessor().fit(x)
        x = self.preprocessor_.transform(x)
        latent, hidden, epochs = self._sizes(*x.shape)
        seed = self.random_state if self.random_state is not None else int(torch.randint(2**31, ()).item())
        self.latent_dim_, self.hidden_ = latent, hidden
        outside = rng_state()  # each member is seeded; the caller's generators are left as they were
        try:
            self._fit_members(x, epochs, seed)
        finally:
            set_rng_state(outside)
        self.train_scores_ = np.sort(self._score(x).log_likelihood)
        self.offset_ = float(np.quantile(self.train_scores_, self.contamination))
        return self

    def _fit_members(self, x: torch.Tensor, epochs: int, seed: int) -> None:
        """Build and train the members, member ``m`` seeded with ``seed + m``."""
        validation = _validation(len(x)) or None
        self.models_, self.guides_, self.history_ = nn.ModuleList(), nn.ModuleList(), []
        for member in range(self.members):
            pyro.set_rng_seed(seed + member)
            model, guide = self._build_member()
            self.history_.append(self._train_member(model, guide, x, epochs, validation, seed + member))
            self.models_.append(model)
            self.guides_.append(guide)

    def _train_member(
        self, model: VAE, guide: AmortizedNormal, x: torch.Tensor, epochs: int, validation: float | None, seed: int
    ) -> list[History]:
        """Train one member (see :meth:`fit`); the histories of its one or two phases."""

        def train(rows: torch.Tensor, phase_epochs: int) -> History:
            return fit(
                model,
                guide,
                rows,
                epochs=phase_epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                validation=validation,
                patience=max(10, epochs // 10) if validation else None,
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

    def _score(self, x: torch.Tensor) -> ImportanceScores:
        """The members' mean log p(x), with the largest of their k̂ (the least reliable estimate in
        the mean). Seeded, so the same rows get the same scores, without touching the caller's
        random state."""
        outside = rng_state()
        pyro.set_rng_seed(self.random_state if self.random_state is not None else 0)
        try:
            x = x.to(next(self.models_.parameters()).device)
            scores = [
                importance_scores(model, guide, x, num_samples=self.num_samples)
                for model, guide in zip(self.models_, self.guides_, strict=True)
            ]
        finally:
            set_rng_state(outside)
        log_likelihood = np.mean([score.log_likelihood for score in scores], axis=0)
        return ImportanceScores(log_likelihood, np.max([score.pareto_k for score in scores], axis=0), self.num_samples)

    def _check_fitted(self) -> None:
        if not hasattr(self, "offset_"):
            raise RuntimeError("this NoveltyDetector is not fitted yet; call fit(X) first")

    def score_with_diagnostics(self, X) -> ImportanceScores:
        """Importance-sampled log p(x) of every row with the Pareto-k̂ of its weights."""
        self._check_fitted()
        x = _as_table(X)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} columns, but the detector was fitted on {self.n_features_in_}")
        return self._score(self.preprocessor_.transform(x))

    def score_samples(self, X) -> np.ndarray:
        """Importance-sampled log p(x) of every row, in nats of the preprocessed data: higher is
        more normal."""
        return self.score_with_diagnostics(X).log_likelihood

    def tail_probability(self, scores: np.ndarray) -> np.ndarray:
        """The empirical probability that a training row scores at most ``scores`` (outputs of
        :meth:`score_samples`): (1 + #{training ≤ s}) / (n + 1). The model was fitted to those
        rows, so new inliers tend to score a little lower and get somewhat smaller values."""
        self._check_fitted()
        return empirical_tail_probability(self.train_scores_, scores)

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for inliers, -1 for outliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector (parameters, preprocessing, training scores) to one
        checkpoint file, atomically."""
        self._check_fitted()
        config = {
            "kind": DETECTOR_KIND,
            "parameters": {name: getattr(self, name) for name in PARAMETERS},
            "n_features_in": self.n_features_in_,
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
        parameters = config["parameters"]
        parameters = {"trim": 0.0} | parameters  # written before trimming: trained without it
        if "members" not in parameters:  # written before the ensemble: one VAE, its state unprefixed
            parameters = parameters | {"members": 1}
            checkpoint.model_state = {f"0.{name}": value for name, value in checkpoint.model_state.items()}
            checkpoint.guide_state = {f"0.{name}": value for name, value in checkpoint.guide_state.items()}
        detector = cls(**{**parameters, "device": str(torch_device)})
        detector.n_features_in_ = config["n_features_in"]
        detector.latent_dim_, detector.hidden_ = config["latent_dim"], tuple(config["hidden"])
        detector.preprocessor_ = TablePreprocessor.from_state_dict(checkpoint.preprocessing)
        members = [detector._build_member() for _ in range(detector.members)]
        detector.models_ = nn.ModuleList(model for model, _ in members)
        detector.guides_ = nn.ModuleList(guide for _, guide in members)
        checkpoint.load_into(detector.models_, detector.guides_)
        detector.models_.to(torch_device).eval()
        detector.guides_.to(torch_device).eval()
        detector.train_scores_ = checkpoint.arrays["train_scores"].double().cpu().numpy()
        detector.offset_ = config["offset"]
        return detector
