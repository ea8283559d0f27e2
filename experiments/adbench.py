"""The ADBench protocol (Han et al. 2022): NoveltyDetector beside IsolationForest and PyOD's detectors.

For every ``.npz`` file (arrays ``X``, ``y``) in ``--data-dir``: data sets under 1,000 rows are
resampled with replacement to 1,000, over 10,000 rows subsampled to 10,000; a stratified 70/30
split; min-max scaling fitted on the training split; each detector fitted on the unlabelled
training split (anomalies included); AUROC x 100 on the test split; mean over seeds 1, 2, 3 (``--seeds``).

Detectors, all on the same splits in the same run:

* ours: ``pyro_vae.novelty.NoveltyDetector(random_state=seed, **params)``, anomaly score
  ``-score_samples`` (its ``score_samples`` is higher for more normal rows);
* ``sklearn.ensemble.IsolationForest(random_state=seed)``, anomaly score ``-score_samples``;
* PyOD's ``ECOD``, ``COPOD``, ``KNN``, ``LOF`` (their defaults) and ``VAE`` (its defaults but
  ``epoch_num=10`` instead of 30, ``--vae-epochs``, so that it runs on a CPU; ``random_state=seed``,
  ``verbose=0``), anomaly score ``decision_function`` (PyOD: higher is more abnormal). A peer that
  fails on a seed gets NaN for that data set and the run goes on; its means are over the sets it
  finished, the table says how many it missed, and ``<peer>_failed`` counts the failed fits.

Halves. The 24 sets are split once, by a rule that looks at no result: sort them by their number
of rows (ties by the file's number), then alternate, the 1st, 3rd, 5th, ... going to DEV and the
2nd, 4th, 6th, ... to REPORT. So both halves hold 3 of the 6 sets under 1,000 rows that the
protocol resamples with replacement, DEV 3 and REPORT 4 of the 7 sets over 10,000 rows that it
subsamples, and pair by pair the sets are of like size. Defaults are chosen on DEV only; REPORT
is run and reported untouched. Sets that are in neither list (another data folder) count only
towards the overall mean.

``duplicated`` is the fraction of training rows that are exact copies of another training row
(mean over seeds). Resampling a set of n < 1,000 rows to 1,000 with replacement makes about
1 - exp(-700/n) of the 700 training rows copies of one another (0.87 for n = 340, 1.00 for n = 80),
and most test rows, anomalies included, then have exact copies in the training split: the
tiny-set regime, unlike the larger sets.

Writes ``results.md`` (one table: per set, every method, ours - IsolationForest and our seconds;
mean rows per half) and ``auroc.png`` to ``--out``, and ends with one ``summary:`` line. The
10,000 x 100 timing is ``experiments/bench_detector.py``.

    .venv/bin/python experiments/adbench.py --data-dir ../shared/data/adbench --half dev
    .venv/bin/python experiments/adbench.py --half dev --param members=3 --param steps=300 --peers none
"""

from __future__ import annotations

import argparse
import ast
import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from pyro_vae.novelty import PARAMETERS, NoveltyDetector

SEEDS = (1, 2, 3)
VAE_EPOCHS = 10
# Sorted by rows (ties by file number) and alternated; see the module docstring. Fixed here so
# that no later run can move a set between halves.
DEV = (
    "15_Hepatitis",
    "46_WPBC",
    "39_vertebral",
    "6_cardio",
    "17_InternetAds",
    "41_Waveform",
    "27_PageBlocks",
    "30_satellite",
    "24_mnist",
    "32_shuttle",
    "34_smtp",
    "33_skin",
)
REPORT = (
    "21_Lymphography",
    "42_WBC",
    "37_Stamps",
    "12_fault",
    "25_musk",
    "44_Wilt",
    "19_landsat",
    "28_pendigits",
    "22_magic.gamma",
    "1_ALOI",
    "8_celeba",
    "11_donors",
)
HALVES = {"dev": DEV, "report": REPORT}


def half_of(stem: str) -> str:
    return "dev" if stem in DEV else "report" if stem in REPORT else "other"


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


def duplicated_fraction(X: np.ndarray) -> float:
    """The fraction of rows of ``X`` that are exact copies of another row of ``X``."""
    _, inverse, counts = np.unique(X, axis=0, return_inverse=True, return_counts=True)
    return float(np.mean(counts[inverse.ravel()] > 1))


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
                }
    return table


def peer_factories(vae_epochs: int) -> dict[str, Callable[[int], object]]:
    """PyOD's detectors by name, each built from a seed; imported here so that ``--peers none``
    needs no PyOD."""
    from pyod.models.copod import COPOD
    from pyod.models.ecod import ECOD
    from pyod.models.knn import KNN
    from pyod.models.lof import LOF
    from pyod.models.vae import VAE

    return {
        "ECOD": lambda seed: ECOD(),
        "COPOD": lambda seed: COPOD(),
        "KNN": lambda seed: KNN(),
        "LOF": lambda seed: LOF(),
        "VAE": lambda seed: VAE(epoch_num=vae_epochs, random_state=seed, verbose=0),
    }


PEERS = ("ECOD", "COPOD", "KNN", "LOF", "VAE")


def parse_param(text: str) -> tuple[str, object]:
    """``key=value`` -> ``(key, ast.literal_eval(value))`` (the raw text if it is no literal)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    if key not in PARAMETERS or key == "random_state":
        raise argparse.ArgumentTypeError(
            f"--param {key!r}: not a NoveltyDetector parameter other than random_state ({', '.join(PARAMETERS)})"
        )
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def number(value: float, spec: str = ".2f") -> str:
    """``value`` in ``spec``, or ``nan`` (never ``+nan``)."""
    return "nan" if math.isnan(value) else format(value, spec)


def nanmean(values) -> float:
    values = [value for value in values if not math.isnan(value)]
    return float(np.mean(values)) if values else math.nan


def plot(rows: list[dict], methods: list[str], labels: dict[str, str], means: dict, seeds: int, path: Path) -> None:
    """Grouped bars of every method's AUROC per set, one panel per half, means in the legend."""
    panels = [(half, [row for row in rows if row["half"] == half]) for half in ("dev", "report", "other")]
    panels = [(half, members) for half, members in panels if members]
    widest = max(len(members) for _, members in panels)
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(max(8, 0.13 * len(methods) * widest + 2), 3.6 * len(panels)), squeeze=False
    )
    colors = plt.get_cmap("tab10").colors
    width = 0.8 / len(methods)
    for axis, (half, members) in zip(axes[:, 0], panels, strict=True):
        positions = np.arange(len(members))
        for index, method in enumerate(methods):
            group = half if half != "other" else "all"
            axis.bar(
                positions + (index - (len(methods) - 1) / 2) * width,
                [row[method] for row in members],
                width,
                color=colors[index % len(colors)],
                label=f"{'pyro_vae' if method == 'ours' else labels[method]} ({number(means[group, method], '.1f')})",
            )
        axis.set_xticks(positions, [row["set"] for row in members], rotation=30, ha="right")
        axis.set_xlim(-0.6, widest - 0.4)
        axis.set_ylim(0, 100)
        axis.set_ylabel(f"test AUROC x 100\n(mean of {seeds} seed{'s' if seeds > 1 else ''})")
        axis.set_title(f"{half.upper()} half" + (" (mean over it in the legend)" if half != "other" else ""))
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("ADBench protocol: test AUROC per data set")
    figure.tight_layout()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/adbench")
    parser.add_argument("--out", default="runs/adbench")
    parser.add_argument("--half", choices=("dev", "report", "all"), default="all")
    parser.add_argument("--sets", help="comma-separated file stems to run (default: every .npz of --half)")
    parser.add_argument(
        "--param", type=parse_param, action="append", default=[], help="key=value for NoveltyDetector (repeatable)"
    )
    parser.add_argument("--peers", default="all", help=f"comma list of {','.join(PEERS)}; 'all' or 'none'")
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=list(SEEDS))
    parser.add_argument("--vae-epochs", type=int, default=VAE_EPOCHS, help="epoch_num of PyOD's VAE")
    args = parser.parse_args()

    params = dict(args.param)
    if args.peers == "all":
        peers = list(PEERS)
    elif args.peers == "none":
        peers = []
    else:
        peers = args.peers.split(",")
        unknown = [peer for peer in peers if peer not in PEERS]
        if unknown:
            parser.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    factories = peer_factories(args.vae_epochs) if peers else {}

    folder, out = Path(args.data_dir), Path(args.out)
    files = sorted(folder.glob("*.npz"), key=lambda path: int(path.stem.split("_")[0]))
    if args.half != "all":
        files = [path for path in files if path.stem in HALVES[args.half]]
    if args.sets:
        wanted = set(args.sets.split(","))
        missing = wanted - {path.stem for path in files}
        if missing:
            parser.error(f"--sets {sorted(missing)} not among the {args.half} sets of {folder}")
        files = [path for path in files if path.stem in wanted]
    if not files:
        raise SystemExit(f"no .npz files in {folder} for --half {args.half}")
    order = {"dev": 0, "report": 1, "other": 2}
    files.sort(key=lambda path: (order[half_of(path.stem)], int(path.stem.split("_")[0])))
    out.mkdir(parents=True, exist_ok=True)
    published = references(folder)
    methods = ["ours", "iforest", *peers]
    labels = {"ours": "ours", "iforest": "IForest"} | {peer: peer for peer in peers}
    started = time.perf_counter()
    rows = []
    for path in tqdm(files, desc="data sets", unit="set"):
        with np.load(path, allow_pickle=False) as archive:
            X, y = archive["X"].astype(np.float64), archive["y"].astype(np.int64)
        auroc = {method: [] for method in methods}
        seconds = {method: [] for method in methods}
        duplicated = []
        failures = {peer: 0 for peer in peers}
        for seed in args.seeds:
            X_train, X_test, y_test = protocol_split(X, y, seed)
            duplicated.append(duplicated_fraction(X_train))
            start = time.perf_counter()
            detector = NoveltyDetector(random_state=seed, **params).fit(X_train)
            auroc["ours"].append(100 * roc_auc_score(y_test, -detector.score_samples(X_test)))
            seconds["ours"].append(time.perf_counter() - start)
            start = time.perf_counter()
            isolation = IsolationForest(random_state=seed).fit(X_train)
            auroc["iforest"].append(100 * roc_auc_score(y_test, -isolation.score_samples(X_test)))
            seconds["iforest"].append(time.perf_counter() - start)
            for peer in peers:
                start = time.perf_counter()
                try:
                    model = factories[peer](seed).fit(X_train)
                    scores = np.asarray(model.decision_function(X_test), dtype=np.float64)
                    if not np.all(np.isfinite(scores)):
                        raise ValueError(f"{np.sum(~np.isfinite(scores))} non-finite scores")
                    auroc[peer].append(100 * roc_auc_score(y_test, scores))
                except Exception as error:  # a peer's failure is recorded, not fatal
                    tqdm.write(f"{path.stem}: {peer} failed with seed {seed}: {type(error).__name__}: {error}")
                    auroc[peer].append(math.nan)
                    failures[peer] += 1
                seconds[peer].append(time.perf_counter() - start)
        name = path.stem.split("_", 1)[1]
        row = {
            "set": name,
            "stem": path.stem,
            "half": half_of(path.stem),
            "train_rows": len(X_train),
            "duplicated": float(np.mean(duplicated)),
            "failures": failures,
        }
        # a seed a peer failed on makes its mean NaN for that set: no partial means
        row |= {method: float(np.mean(auroc[method])) for method in methods}
        row |= {f"{method}_seconds": float(np.mean(seconds[method])) for method in methods}
        row |= published.get(name, {})
        row["gap"] = row["ours"] - row["iforest"]
        rows.append(row)
        tqdm.write(
            f"{name:16s} [{row['half']}] "
            + "  ".join(f"{labels[method]} {row[method]:6.2f}" for method in methods)
            + f"  ({row['ours_seconds']:.0f} s)"
        )
    minutes = (time.perf_counter() - started) / 60

    groups = {"dev": [r for r in rows if r["half"] == "dev"], "report": [r for r in rows if r["half"] == "report"]}
    groups["all"] = rows
    means = {
        (group, method): nanmean([row[method] for row in members]) if members else math.nan
        for group, members in groups.items()
        for method in [*methods, "gap"]
    }
    worst = min(rows, key=lambda row: row["gap"])
    worst_of = {group: min(members, key=lambda row: row["gap"]) for group, members in groups.items() if members}

    parameter_text = ", ".join(f"{key}={value!r}" for key, value in params.items()) or "the defaults"
    header = ["set", "half", "train rows", "duplicated", *[labels[m] for m in methods], "ours - IForest", "ours s"]
    header += ["ADBench IForest", "ADBench best"]
    lines = [
        "# ADBench protocol: NoveltyDetector beside IsolationForest and PyOD's detectors",
        "",
        f"AUROC x 100 on the test split, mean of seeds {', '.join(map(str, args.seeds))}; NoveltyDetector with "
        f"{parameter_text}. Peers: IsolationForest (scikit-learn defaults)"
        + (
            f", PyOD's {', '.join(peers)} (defaults"
            + (f"; VAE with epoch_num={args.vae_epochs}" if "VAE" in peers else "")
            + ")"
            if peers
            else ""
        )
        + ". DEV and REPORT are the fixed halves of the 24 sets (experiments/adbench.py); defaults are "
        "chosen on DEV only. `duplicated`: fraction of training rows that are exact copies of another "
        "training row (sets under 1,000 rows are resampled with replacement to 1,000). `ours s`: seconds "
        "to fit and score, mean over seeds. `ADBench IForest` and `ADBench best` are published "
        "(Table D4 of the ADBench paper, same protocol, PyOD 0.9.8). NaN: the method failed on a seed.",
        "",
        "| " + " | ".join(header) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |",
    ]
    for row in rows:
        cells = [
            row["set"],
            row["half"].upper(),
            str(row["train_rows"]),
            f"{row['duplicated']:.2f}",
            *[f"{row[method]:.2f}" for method in methods],
            f"{row['gap']:+.2f}" + (" (more than 10 below)" if row["gap"] < -10 else ""),
            f"{row['ours_seconds']:.0f}",
            *[f"{row.get(key, math.nan):.2f}" for key in ("adbench_iforest", "adbench_best")],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for group, members in groups.items():
        if not members:
            continue
        missing = {m: sum(math.isnan(row[m]) for row in members) for m in methods}
        cells = [
            f"**{group} mean** ({len(members)} set{'s' if len(members) > 1 else ''})",
            "",
            "",
            f"{np.mean([row['duplicated'] for row in members]):.2f}",
            *[f"**{means[group, m]:.2f}**" + (f" ({missing[m]} NaN left out)" if missing[m] else "") for m in methods],
            f"**{means[group, 'gap']:+.2f}**",
            f"{np.mean([row['ours_seconds'] for row in members]):.0f}",
            "",
            "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    lines += [
        f"Worst set gap (ours - IForest), {group}: {row['gap']:+.2f} on {row['set']}."
        for group, row in worst_of.items()
    ]
    lines += [
        "",
        "Seconds to fit and score one split, mean over sets and seeds: "
        + ", ".join(f"{labels[m]} {np.mean([row[f'{m}_seconds'] for row in rows]):.1f}" for m in methods)
        + f". Whole run: {minutes:.1f} min.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    plot(rows, methods, labels, means, len(args.seeds), out / "auroc.png")
    print("\n".join(lines))
    print(f"wrote {out / 'results.md'} and {out / 'auroc.png'}; {minutes:.1f} min")

    values = {
        "mean_auroc": f"{means['all', 'ours']:.2f}",
        "dev_mean_auroc": f"{means['dev', 'ours']:.2f}",
        "report_mean_auroc": f"{means['report', 'ours']:.2f}",
    }
    for method in methods[1:]:
        key = method.lower()
        values |= {
            f"{key}_mean_auroc": f"{means['all', method]:.2f}",
            f"{key}_dev_mean_auroc": f"{means['dev', method]:.2f}",
            f"{key}_report_mean_auroc": f"{means['report', method]:.2f}",
        }
    values |= {f"{peer.lower()}_failed": str(sum(row["failures"][peer] for row in rows)) for peer in peers}
    values |= {
        "mean_gap": number(means["all", "gap"], "+.2f"),
        "dev_mean_gap": number(means["dev", "gap"], "+.2f"),
        "report_mean_gap": number(means["report", "gap"], "+.2f"),
        "worst_gap": f"{worst['gap']:+.2f}",
        "worst_gap_set": worst["set"],
        "sets": str(len(rows)),
        "seeds": ",".join(map(str, args.seeds)),
        "minutes": f"{minutes:.1f}",
    }
    values |= {f"gap_{row['set']}": f"{row['gap']:+.2f}" for row in rows}
    print("summary: " + " ".join(f"{key}={value}" for key, value in values.items()))


if __name__ == "__main__":
    main()
