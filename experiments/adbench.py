"""The ADBench protocol (Han et al. 2022) for pyro_vae's NoveltyDetector, beside IsolationForest.

For every ``.npz`` file (arrays ``X``, ``y``) in ``--data-dir``: data sets under 1,000 rows are
resampled with replacement to 1,000, over 10,000 rows subsampled to 10,000; a stratified 70/30
split; min-max scaling fitted on the training split; each detector fitted on the unlabelled
training split; AUROC on the test split; seeds 1, 2, 3. Prints per data set and on average our
AUROC, IsolationForest's (run here, same splits), ADBench's published IsolationForest and best
method (Table D4) and PyOD's VAE from the DTE paper (Livernoche et al. 2024, another protocol).
Writes ``results.md`` and ``auroc.png`` to ``--out`` and ends with one ``summary:`` line.

    .venv/bin/python experiments/adbench.py --data-dir ../shared/data/adbench
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from pyro_vae.novelty import NoveltyDetector

SEEDS = (1, 2, 3)


def protocol_split(X: np.ndarray, y: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    if len(X) < 1000:
        index = rng.choice(len(X), 1000, replace=True)
        X, y = X[index], y[index]
    elif len(X) > 10000:
        index = rng.choice(len(X), 10000, replace=False)
        X, y = X[index], y[index]
    X_train, X_test, _, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    low, high = X_train.min(0), X_train.max(0)
    span = np.where(high > low, high - low, 1.0)
    return (X_train - low) / span, (X_test - low) / span, y_test


def references(folder: Path) -> dict[str, dict[str, float]]:
    """Published AUROCs by data set name (the part of the file name after the number)."""
    table: dict[str, dict[str, float]] = {}
    summary = folder / "reference_results" / "summary_copied_datasets.csv"
    if summary.exists():
        with summary.open() as handle:
            for row in csv.DictReader(handle):
                name = row["file"].split("_", 1)[1].removesuffix(".npz")
                table[name] = {
                    "adbench_iforest": float(row["adbench_IForest"] or "nan"),
                    "adbench_best": float(row["adbench_best"] or "nan"),
                    "dte_vae": float(row["dte_VAE_mean"] or "nan"),
                }
    return table


def time_fit_and_score(rows: int = 10_000, columns: int = 100) -> float:
    """Seconds to fit the default detector to a ``rows`` x ``columns`` table and score it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 10)) @ rng.normal(size=(10, columns)) + 0.1 * rng.normal(size=(rows, columns))
    start = time.perf_counter()
    NoveltyDetector(random_state=0).fit(X).score_samples(X)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/adbench")
    parser.add_argument("--out", default="runs/adbench")
    parser.add_argument("--sets", help="comma-separated file stems to run (default: every .npz)")
    parser.add_argument("--skip-timing", action="store_true", help="skip timing fit + score on 10,000 x 100")
    args = parser.parse_args()

    folder, out = Path(args.data_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.glob("*.npz"), key=lambda path: int(path.stem.split("_")[0]))
    if args.sets:
        wanted = set(args.sets.split(","))
        files = [path for path in files if path.stem in wanted]
    if not files:
        raise SystemExit(f"no .npz files in {folder}")
    published = references(folder)
    started = time.perf_counter()
    rows = []
    for path in tqdm(files, desc="data sets", unit="set"):
        with np.load(path, allow_pickle=False) as archive:
            X, y = archive["X"].astype(np.float64), archive["y"].astype(np.int64)
        ours, forest, seconds = [], [], []
        for seed in SEEDS:
            X_train, X_test, y_test = protocol_split(X, y, seed)
            start = time.perf_counter()
            detector = NoveltyDetector(random_state=seed).fit(X_train)
            ours.append(100 * roc_auc_score(y_test, -detector.score_samples(X_test)))
            seconds.append(time.perf_counter() - start)
            isolation = IsolationForest(random_state=seed).fit(X_train)
            forest.append(100 * roc_auc_score(y_test, -isolation.score_samples(X_test)))
        name = path.stem.split("_", 1)[1]
        row = {"set": name, "ours": np.mean(ours), "iforest": np.mean(forest), "seconds": np.mean(seconds)}
        row |= published.get(name, {})
        rows.append(row)
        tqdm.write(
            f"{name:16s} ours {row['ours']:6.2f}  IsolationForest {row['iforest']:6.2f}  ({row['seconds']:.0f} s)"
        )

    mean_ours = float(np.mean([row["ours"] for row in rows]))
    mean_forest = float(np.mean([row["iforest"] for row in rows]))
    lines = [
        "# ADBench protocol: NoveltyDetector (importance-sampled log p(x)) vs IsolationForest",
        "",
        "AUROC x 100 on the test split, mean of seeds 1, 2, 3. `ADBench IForest` and `ADBench best` are "
        "Table D4 of the ADBench paper (same protocol); `PyOD VAE (DTE)` is from the DTE paper, "
        "whose protocol differs.",
        "",
        "| data set | ours | IsolationForest (here) | ours - IForest | ADBench IForest | ADBench best "
        "| PyOD VAE (DTE) | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [row.get(key, float("nan")) for key in ("adbench_iforest", "adbench_best", "dte_vae")]
        lines.append(
            f"| {row['set']} | {row['ours']:.2f} | {row['iforest']:.2f} | {row['ours'] - row['iforest']:+.2f}"
            + (" (more than 10 below)" if row["ours"] < row["iforest"] - 10 else "")
            + " | "
            + " | ".join(f"{value:.2f}" for value in cells)
            + f" | {row['seconds']:.0f} |"
        )
    lines.append(f"| **mean** | **{mean_ours:.2f}** | **{mean_forest:.2f}** | {mean_ours - mean_forest:+.2f} | | | | |")
    timing = math.nan if args.skip_timing else time_fit_and_score()
    lines += ["", f"Fit + score_samples on a 10,000 x 100 table with the defaults: {timing:.0f} s."]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    figure, axes = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 4.5))
    positions = np.arange(len(rows))
    axes.bar(positions - 0.2, [row["ours"] for row in rows], 0.4, label=f"pyro_vae ({mean_ours:.1f})")
    axes.bar(positions + 0.2, [row["iforest"] for row in rows], 0.4, label=f"IsolationForest ({mean_forest:.1f})")
    axes.set_xticks(positions, [row["set"] for row in rows], rotation=60, ha="right")
    axes.set_ylabel("test AUROC x 100 (mean of 3 seeds)")
    axes.set_ylim(0, 100)
    axes.set_title("ADBench protocol")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(out / "auroc.png", dpi=120, bbox_inches="tight")
    print("\n".join(lines))
    print(f"wrote {out / 'results.md'} and {out / 'auroc.png'}; {(time.perf_counter() - started) / 60:.1f} min")
    gaps = " ".join(f"gap_{row['set']}={row['ours'] - row['iforest']:+.2f}" for row in rows)
    print(
        f"summary: mean_auroc={mean_ours:.2f} iforest_mean_auroc={mean_forest:.2f} sets={len(rows)} "
        f"fit_score_10k_x_100_seconds={timing:.0f} minutes={(time.perf_counter() - started) / 60:.1f} {gaps}"
    )


if __name__ == "__main__":
    main()
