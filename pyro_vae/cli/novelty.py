"""The novelty workflow: ``pyro-vae fit-detector`` and ``pyro-vae score``.

``fit-detector`` trains a :class:`~pyro_vae.novelty.NoveltyDetector` on a CSV or NPZ table and
writes ``detector.pt``. ``score`` scores new data with a detector or with a run written by
``pyro-vae train``: a CSV sorted most novel first (score, tail probability against the training
scores, novelty flag, Pareto-k̂), a histogram of training against new scores with the threshold,
and, when the data carry 0/1 labels (1 = novel), a ROC curve with its AUROC.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae import plots
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli.inputs import check_shape, chosen_split, read_data
from pyro_vae.cli.report import (
    conditional_score_table,
    novelty_order,
    novelty_report,
    rankable,
    score_name,
    score_table,
)
from pyro_vae.cli.stock import Run, checkpoint_path, load_run
from pyro_vae.data import load_dataset
from pyro_vae.diagnostics import (
    REFERENCE_QUANTILE,
    reference_quantile,
    reliable_k,
    to_inference_data,
    unreliable_cut,
)
from pyro_vae.novelty import DETECTOR_KIND, NoveltyDetector, empirical_tail_probability
from pyro_vae.ood import complexity_corrected, likelihood_regret
from pyro_vae.training import split_data
from pyro_vae.typicality import TypicalityTest

DETECTOR_NAME = "detector.pt"
NETCDF_COLUMNS = ("index", "score", "log_likelihood", "elbo", "pareto_k", "tail_probability", "novel")
CORRECTION_NAMES = {"complexity": "log p(x) + L(x)", "regret": "-regret", "typicality": "typicality"}


def data_spec(text: str) -> str:
    """A path ending in .csv or .npz becomes ``csv:PATH`` / ``npz:PATH``, a folder
    ``images:DIR``; other specs pass."""
    if ":" in text:
        return text
    suffix = Path(text).suffix.lower()
    if suffix in (".csv", ".npz"):
        return f"{suffix[1:]}:{text}"
    return f"images:{text}" if Path(text).is_dir() else text


def fit_detector(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / DETECTOR_NAME).exists() and not args.overwrite:
        raise FileExistsError(f"{out / DETECTOR_NAME} exists; pass --overwrite to replace it")
    spec = data_spec(args.data)
    x, _ = read_data(spec, None, args.split)
    if x.dim() != 2:
        raise ValueError(f"fit-detector takes a table (rows, columns); {spec} holds data shaped {tuple(x.shape)}")
    detector = NoveltyDetector(
        members=args.members,
        steps=args.steps,
        trim=args.trim,
        epochs=args.epochs,
        num_samples=args.num_samples,
        contamination=args.contamination,
        random_state=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    start = time.perf_counter()
    detector.fit(x.numpy())
    seconds = time.perf_counter() - start
    path = detector.save(out / DETECTOR_NAME)
    kept = int(detector.preprocessor_.keep.sum())
    binary = int(detector.preprocessor_.binary.sum())
    print(
        f"fitted on {x.shape[0]} rows x {x.shape[1]} columns ({x.shape[1] - kept} constant dropped, {binary} binary) "
        f"in {seconds:.1f} s; threshold log p(x) < {detector.offset_:.3f} flags {args.contamination:.1%} of them"
    )
    print(f"wrote {path}")
    return 0


@dataclass
class Reliability:
    """Which log p(x) estimates are flagged unreliable: Pareto-k̂ above ``cut``."""

    num_samples: int  # the K of the estimates whose k̂ these are
    cut: float  # diagnostics.unreliable_cut
    reference: str | None = None  # whose k̂ the cut was set beside, e.g. "training data"
    quantile: float | None = None  # the reference's 99 % quantile of k̂ (None: no reference k̂)
    reference_share: float | None = None  # share of the reference's k̂ above the absolute cut

    @classmethod
    def beside(cls, num_samples: int, reference_k: np.ndarray, reference: str) -> Reliability:
        """The flag set beside the k̂ of ``reference`` (no k̂ there: the absolute cut)."""
        quantile = reference_quantile(reference_k)  # None for no k̂ at all, or only NaN
        if quantile is None:
            return cls(num_samples, reliable_k(num_samples))
        share = float(np.mean(reference_k > reliable_k(num_samples)))
        return cls(num_samples, unreliable_cut(num_samples, reference_k), reference, quantile, share)


@dataclass
class Scored:
    """New data scored against a reference of training scores."""

    rows: list[dict]  # most novel first
    reference: np.ndarray  # sorted training scores
    threshold: float
    score: str  # what the score is, e.g. "log p(x)"
    num_samples: int  # K
    reliability: Reliability


def _ranked(rows: list[dict], scores: np.ndarray | None = None) -> list[dict]:
    """Rows with a ``score`` column (``scores`` by datum index, else log p(x)), most novel first."""
    for row in rows:
        row["score"] = float(row["log_likelihood"] if scores is None else scores[row["index"]])
    rows = [rows[index] for index in novelty_order(np.array([row["score"] for row in rows]))]
    for rank, row in enumerate(rows):
        row["rank"] = rank + 1
    return rows


def _annotate(rows: list[dict], reference: np.ndarray, threshold: float, k_cut: float) -> None:
    scores = np.array([row["score"] for row in rows])
    for row, tail in zip(rows, empirical_tail_probability(reference, rankable(scores)), strict=True):
        row["tail_probability"] = float(tail)
        row["novel"] = int(not row["score"] >= threshold)  # a score that is not a number is novel
        row["unscorable"] = int(not np.isfinite(row["score"]))
        if "pareto_k" in row:
            row["unreliable"] = int(row["pareto_k"] > k_cut)


def _score_with_detector(detector: NoveltyDetector, x: torch.Tensor, labels: torch.Tensor | None) -> Scored:
    scores = detector.score_with_diagnostics(x.numpy())
    rows = [
        {
            "rank": 0,  # set by _ranked
            "index": index,
            "label": "" if labels is None else int(labels[index]),
            "log_likelihood": float(scores.log_likelihood[index]),
            "pareto_k": float(scores.pareto_k[index]),
        }
        for index in range(len(x))
    ]
    rows = _ranked(rows)
    reference = np.sort(detector.train_scores_)
    reliability = Reliability(scores.num_samples, reliable_k(scores.num_samples))  # it keeps no training k̂
    _annotate(rows, reference, detector.offset_, reliability.cut)
    return Scored(rows, reference, detector.offset_, "log p(x)", detector.num_samples, reliability)


def correction_of(run: Run, args: argparse.Namespace) -> str:
    """The ``--correction`` asked for; ``auto`` is the typicality test for an unconditional run
    on images and none (log p(x)) otherwise."""
    if args.correction != "auto":
        return args.correction
    return "typicality" if len(run.config["x_shape"]) == 3 and not run.conditional else "none"


def _run_rows(run: Run, x: torch.Tensor, labels: torch.Tensor | None, correction: str, args) -> list[dict]:
    """Per-datum scores of a run, ranked by ``correction`` (not the typicality test)."""
    if run.conditional:
        if correction != "none":
            raise ValueError(f"--correction {correction} works with unconditional runs only; pass --correction none")
        classes = run.config["num_classes"]
        rows = conditional_score_table(run.model, run.guide, x.float(), labels, classes, args.num_samples)[0]
        return _ranked(rows)
    rows = score_table(run.model, run.guide, x, labels, args.num_samples)
    if correction == "none":
        return _ranked(rows)
    if x.dim() != 4:
        raise ValueError(
            f"--correction {correction} is for images; this run's data are not images: pass --correction none"
        )
    log_px = np.empty(len(rows))
    log_px[[row["index"] for row in rows]] = [row["log_likelihood"] for row in rows]
    if correction == "complexity":
        return _ranked(rows, complexity_corrected(log_px, x))
    return _ranked(rows, -likelihood_regret(run.model, run.guide, x.float(), progress=None).cpu().numpy())


def held_out_images(run: Run, size: int) -> torch.Tensor:
    """Up to ``size`` of the training images the run held out for validation (``--validation``,
    split with its ``--seed`` exactly as training split them): images it was not fitted to."""
    arguments = run.config.get("arguments", {})
    train = run.preprocessor.transform(load_dataset(run.config["dataset"], run.config.get("data_dir")).train_x)
    _, held_out = split_data(train, arguments.get("validation"), arguments.get("seed", 0))
    if held_out is None:
        raise ValueError(
            "the typicality test needs training images the run was not fitted to, and this run held out none "
            "(--validation 0); retrain with --validation 0.1, or pass --correction complexity"
        )
    return held_out[0][:size].to(run.device)


def _score_with_run(run: Run, args: argparse.Namespace, x: torch.Tensor, labels: torch.Tensor | None) -> Scored:
    """Scores ``x``; the reference is a random subset of the run's own training data, or for the
    typicality test its held-out validation images."""
    correction = correction_of(run, args)
    if correction == "typicality":
        held_out = held_out_images(run, args.reference_size)
        test = TypicalityTest(run.model, run.guide, progress=None).fit(held_out)
        reference, reference_name = np.sort(test.reference_), "held-out images"
        reference_rows = score_table(run.model, run.guide, held_out, None, args.num_samples)  # their k̂
        rows = _ranked(score_table(run.model, run.guide, x, labels, args.num_samples), test.score(x.float()))
    else:
        reference_name = "training data"
        train = load_dataset(run.config["dataset"], run.config.get("data_dir")).train_x
        subset = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.reference_size]
        reference_x = run.preprocessor.transform(train[subset]).to(run.device)
        reference_rows = _run_rows(run, reference_x, None, correction, args)
        reference = np.sort([row["score"] for row in reference_rows])
        rows = _run_rows(run, x, labels, correction, args)
    threshold = float(np.quantile(reference, args.contamination))
    reference_k = np.array([row["pareto_k"] for row in reference_rows if "pareto_k" in row])
    reliability = Reliability.beside(args.num_samples, reference_k, reference_name)
    _annotate(rows, reference, threshold, reliability.cut)
    name = CORRECTION_NAMES.get(correction, score_name(run.config))
    return Scored(rows, reference, threshold, name, args.num_samples, reliability)


def _target_path(location: str) -> Path:
    """A detector directory (holding ``detector.pt``), a run directory, or either file."""
    path = Path(location)
    return path / DETECTOR_NAME if (path / DETECTOR_NAME).is_file() else checkpoint_path(path)


def _load_data(args: argparse.Namespace, default_spec: str | None, default_dir: str | None):
    if args.data is None and default_spec is None:
        raise ValueError("a detector has no data set of its own; pass the data to score with --data FILE.csv|FILE.npz")
    spec = data_spec(args.data) if args.data else default_spec
    split = chosen_split(args.split, spec, args.data is not None)
    x, labels = read_data(spec, args.data_dir if args.data else (args.data_dir or default_dir), split)
    return x, labels, spec, split


def score(args: argparse.Namespace) -> int:
    path = _target_path(args.run)
    if load_checkpoint(path).config.get("kind") == DETECTOR_KIND:
        if args.correction not in ("auto", "none"):
            raise ValueError(
                f"--correction {args.correction} applies to image runs; a detector scores tables by log p(x)"
            )
        detector = NoveltyDetector.load(path, args.device)
        x, labels, spec, split = _load_data(args, None, None)
        scored = _score_with_detector(detector, x, labels)
        out = Path(args.out) if args.out else path.parent
    else:
        run = load_run(args.run, args.device)
        x, labels, spec, split = _load_data(args, run.config["dataset"], run.config.get("data_dir"))
        check_shape(x, run.config["x_shape"], spec)
        x = run.preprocessor.transform(x.double()).to(run.device)  # float64 keeps extreme values finite
        run.model.likelihood.check_support(x)
        scored = _score_with_run(run, args, x, labels)
        out = Path(args.out) if args.out else run.directory
    out.mkdir(parents=True, exist_ok=True)
    written, metrics = _write_report(scored, x, labels, out, f"{spec} {split}", args)
    _print_summary(scored, metrics, f"{spec} {split}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _binary_labels(labels: torch.Tensor | None) -> np.ndarray | None:
    if labels is None:
        return None
    values = labels.cpu().numpy()
    return values if set(np.unique(values).tolist()) == {0, 1} else None


def _write_report(
    scored: Scored, x: torch.Tensor, labels: torch.Tensor | None, out: Path, name: str, args: argparse.Namespace
) -> tuple[list[Path], dict]:
    """The CSV, histograms, top-10 grid (images), ROC (0/1 labels), metrics JSON and, with
    ``--netcdf``, the ArviZ file."""
    stem = args.stem
    written = novelty_report(scored.rows, x, out, name, scored.score, stem=stem, key="score")
    scores = np.array([row["score"] for row in scored.rows])
    written.append(
        plots.reference_histogram(
            scored.reference,
            scores,
            scored.threshold,
            out / f"{stem}_vs_training.png",
            f"{name} against the training data",
            scored.score,
        )
    )
    novel = _binary_labels(labels)
    flagged = int(sum(row["novel"] for row in scored.rows))
    unscorable = int((~np.isfinite(scores)).sum())
    metrics = {"count": len(scores), "threshold": scored.threshold, "flagged": flagged, "unscorable": unscorable}
    if novel is not None:
        order = [row["index"] for row in scored.rows]
        path, metrics["auroc"] = plots.roc_curve(
            novel[order], -rankable(scores), out / f"{stem}_roc.png", f"{name}: ROC"
        )
        written.append(path)
    elif labels is not None:
        print("labels are not 0/1 (1 = novel), so no ROC curve is drawn")
    if any("pareto_k" in row for row in scored.rows):
        metrics["unreliable"] = int(sum(row.get("unreliable", 0) for row in scored.rows))
        cut = scored.reliability.cut
        metrics["unreliable_cut"] = cut if np.isfinite(cut) else None  # JSON has no infinities
    written.append(out / f"{stem}_metrics.json")
    written[-1].write_text(json.dumps(metrics, indent=2) + "\n")
    if args.netcdf:
        columns = [key for key in NETCDF_COLUMNS if key in scored.rows[0]]
        per_datum = {key: np.array([row[key] for row in scored.rows]) for key in columns}
        path = out / f"{stem}.nc"
        to_inference_data(per_datum, threshold=scored.threshold, score=scored.score).to_netcdf(str(path))
        written.append(path)
    return written, metrics


def _print_reliability(reliability: Reliability, count: int, rows: list[dict]) -> None:
    """How many log p(x) estimates are flagged unreliable, and against what."""
    absolute, samples = reliable_k(reliability.num_samples), reliability.num_samples
    if not any(np.isfinite(row["pareto_k"]) for row in rows):
        print(f"  Pareto k̂ not computed (K = {samples}; PSIS needs at least 21 weights per datum)")
        return
    flagged = f"  {count} log p(x) estimates (K = {samples}) with Pareto k̂ > {reliability.cut:.2f}"
    if reliability.quantile is None:
        print(f"{flagged}: not to be trusted")
        return
    quantile = f"the {reliability.reference}'s {REFERENCE_QUANTILE:.0%} quantile"
    cut = quantile if reliability.cut > absolute else f"PSIS's cut-off, above {quantile}"
    print(f"{flagged} ({cut}): less reliable than nearly all of the {reliability.reference}'s")
    if reliability.cut > absolute:
        print(
            f"  the {reliability.reference}'s own estimates have k̂ > {absolute:.2f} for "
            f"{reliability.reference_share:.0%}: lower bounds that rank data rather than exact values; "
            "a larger --num-samples tightens them but seldom brings k̂ under the cut"
        )


def _print_summary(scored: Scored, metrics: dict, name: str) -> None:
    print(
        f"{name}: {metrics['flagged']} of {metrics['count']} flagged as novel "
        f"({scored.score} < {scored.threshold:.3f}, the training data's threshold)"
    )
    if metrics["unscorable"]:
        print(f"  {metrics['unscorable']} could not be scored (no finite {scored.score}): ranked most novel, flagged")
    if "unreliable" in metrics:
        _print_reliability(scored.reliability, metrics["unreliable"], scored.rows)
    if "auroc" in metrics:
        print(f"  AUROC against the labels (1 = novel): {metrics['auroc']:.4f}")
    print(f"most novel (lowest {scored.score}, nats):")
    for row in scored.rows[:5]:
        print(
            f"  #{row['index']:<6d} label {row['label']!s:>3}  {scored.score} {row['score']:10.4g}  "
            f"tail p {row['tail_probability']:.4f}"
        )
