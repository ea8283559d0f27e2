"""pyro_vae.plots: figures outside pyplot's state, written as PNG whatever matplotlib's backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from pyro_vae import plots
from pyro_vae.training import History

PNG = b"\x89PNG\r\n\x1a\n"

IMPORT_EVERYTHING_THEN_PLOT = textwrap.dedent(
    """
    import importlib, sys
    from pathlib import Path

    import matplotlib

    matplotlib.use("svg")  # the caller's choice, not the default
    before = (matplotlib.get_backend(), matplotlib.rcParams["backend"])


    def check(what):
        after = (matplotlib.get_backend(), matplotlib.rcParams["backend"])
        assert after == before, f"{what} changed the backend from {before} to {after}"


    import pyro_vae

    check("importing pyro_vae")
    root = Path(pyro_vae.__file__).parent
    files = sorted(path.relative_to(root).with_suffix("") for path in root.rglob("*.py"))
    names = [".".join(("pyro_vae", *file.parts)).removesuffix(".__init__") for file in files]
    names += ["pyro_vae.models", "pyro_vae.guides", "pyro_vae.latent", "pyro_vae.ood", "pyro_vae.plots"]
    for name in names:
        if name != "pyro_vae.__main__":  # runs the command line
            importlib.import_module(name)
            check(f"importing {name}")

    from pyro_vae import plots
    from pyro_vae.training import History

    history = History(epoch=[1, 2], train_elbo=[-3.0, -2.0], val_elbo=[-3.5, -2.5], kl_weight=[1, 1], seconds=[1, 1])
    path = plots.plot_history(history, Path(sys.argv[1]) / "elbo.png")
    assert path.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n", "not a PNG"
    check("plotting")
    print(len(names), "modules")
    """
)


def test_no_import_or_plot_changes_matplotlibs_backend(tmp_path):
    """A program that chose the svg backend keeps it after importing every pyro_vae module and
    writing a PNG with pyro_vae.plots."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING_THEN_PLOT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "elbo.png").read_bytes()[:8] == PNG


def test_every_figure_is_a_png(tmp_path):
    images = torch.rand(3, 1, 6, 6)
    scores = np.random.default_rng(0).normal(size=200)
    written = [
        plots.image_grid(images, tmp_path / "grid.png", "grid", captions=["a", "b", "c"]),
        plots.reconstruction_grid(images[:1], images[:1], tmp_path / "one_pair.png", "one datum"),
        plots.reconstruction_grid(images, images, tmp_path / "pairs.png", "three data"),
        plots.score_histogram(scores, tmp_path / "histogram.png", "scores", marked=np.sort(scores)[:5]),
        plots.reference_histogram(scores, scores + 1, -1.0, tmp_path / "reference.png", "reference"),
        plots.roc_curve(np.arange(200) % 2, scores, tmp_path / "roc.png", "roc")[0],
        plots.scatter(np.stack([scores, scores], 1), np.arange(200) % 3, tmp_path / "scatter.png", "scatter"),
    ]
    for path in written:
        assert path.read_bytes()[:8] == PNG, path.name


def test_score_histogram_keeps_its_axis_label(tmp_path, monkeypatch):
    """The legend of the marked scores once overwrote the ``label`` parameter, and the x-axis read
    'None per datum (nats)'."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or path)
    scores = np.random.default_rng(0).normal(size=100)
    plots.score_histogram(scores, tmp_path / "h.png", "scores", marked=np.sort(scores)[:3], label="score")
    assert figures[0].axes[0].get_xlabel().startswith("score per datum (nats)")


def test_a_score_histogram_with_0_1_labels_draws_the_two_groups(tmp_path, monkeypatch):
    drawn = {}

    def keep(figure, path):
        drawn["figure"] = figure
        return path

    monkeypatch.setattr(plots, "_save", keep)
    scores = np.r_[np.random.default_rng(0).normal(size=90), np.random.default_rng(1).normal(-5, 1, size=10)]
    groups = np.r_[np.zeros(90, dtype=int), np.ones(10, dtype=int)]
    plots.score_histogram(scores, tmp_path / "h.png", "scores", groups=groups)
    legend = [text.get_text() for text in drawn["figure"].axes[0].get_legend().get_texts()]
    assert legend == ["normal (label 0): 90", "novel (label 1): 10"]
    plots.score_histogram(scores, tmp_path / "h.png", "scores")
    assert drawn["figure"].axes[0].get_legend() is None  # one group without labels


def test_the_history_plot_names_the_objective_of_each_column(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure) or Path(path))
    for training, validation in (
        ("ELBO", "ELBO"),
        ("IWAE bound (K = 5)",) * 2,
        ("ELBO with free bits (λ = 2)", "ELBO"),
    ):
        columns = [1, 2], [-3.0, -2.0], [-3.5, -2.5], [1, 1], [1, 1]
        history = History(*columns, objective=training, validation_objective=validation)
        plots.plot_history(history, tmp_path / "elbo.png")
    labels = [(figure.axes[0].get_ylabel(), [line.get_label() for line in figure.axes[0].lines]) for figure in drawn]
    assert labels == [
        ("ELBO per datum (nats)", ["training (minibatch average)", "validation"]),
        ("IWAE bound (K = 5) per datum (nats)", ["training (minibatch average)", "validation"]),
        (
            "objective per datum (nats)",
            ["training: ELBO with free bits (λ = 2) (minibatch average)", "validation: ELBO"],
        ),
    ]
