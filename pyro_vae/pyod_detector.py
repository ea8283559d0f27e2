"""The novelty detector in PyOD's conventions (``pip install pyro-vae[pyod]``).

PyOD (Zhao et al. 2019, "PyOD: A Python Toolbox for Scalable Outlier Detection") turns
scikit-learn's signs around: ``decision_function`` is *higher for more abnormal* rows,
``predict`` returns 1 for outliers and 0 for inliers, and a fitted detector carries
``decision_scores_`` (the training rows' outlier scores, in row order), ``threshold_`` and
``labels_``. :class:`PyODNoveltyDetector` is :class:`~pyro_vae.novelty.NoveltyDetector` (the same
parameters, training and log p(x)) on PyOD's :class:`~pyod.models.base.BaseDetector`, whose
``predict_proba``, ``predict_confidence`` and ``fit_predict`` it inherits, so PyOD's own
utilities (``pyod.utils.data.evaluate_print``, model combination) take it like any PyOD model.
Its outlier score is ``-log p(x)``.
"""

from __future__ import annotations

import numpy as np
from pyod.models.base import BaseDetector

from pyro_vae.novelty import NoveltyDetector


class PyODNoveltyDetector(NoveltyDetector, BaseDetector):
    """:class:`~pyro_vae.novelty.NoveltyDetector` with PyOD's signs and attributes: outlier score
    ``-log p(x)``, higher is more abnormal; ``predict`` gives 1 for outliers."""

    def fit(self, X, y=None) -> PyODNoveltyDetector:
        """Fit as :meth:`NoveltyDetector.fit`; then ``decision_scores_`` (row order),
        ``threshold_`` (the ``1 - contamination`` quantile of them) and ``labels_``."""
        super().fit(X, y)
        self._set_n_classes(y)
        self.decision_scores_ = -self.train_scores_
        self._process_decision_scores()
        return self

    @classmethod
    def load(cls, path, device: str = "cpu") -> PyODNoveltyDetector:
        """Read a detector file (:meth:`NoveltyDetector.save`) with PyOD's fitted attributes."""
        detector = super().load(path, device)
        detector._set_n_classes(None)
        detector.decision_scores_ = -detector.train_scores_
        detector._process_decision_scores()
        return detector

    def decision_function(self, X) -> np.ndarray:
        """The outlier score ``-log p(x)`` of every row: higher is more abnormal."""
        return -self.score_samples(X)

    def predict(self, X, return_confidence: bool = False):
        """1 for outliers (score above ``threshold_``), 0 for inliers (PyOD's convention)."""
        return BaseDetector.predict(self, X, return_confidence=return_confidence)
