"""Detector speed: NoveltyDetector's fit and score on a 10,000 x 100 table, beside IsolationForest.

The table is synthetic and low-rank: ``rng = numpy.random.default_rng(0)``,
``X = rng.normal(size=(rows, 10)) @ rng.normal(size=(10, columns)) + 0.1 * rng.normal(size=(rows, columns))``
(the generator of the timing that used to be in ``experiments/adbench.py``). ``NoveltyDetector``
with its defaults and ``random_state=0`` is fitted to it and then scores it (``score_samples``),
the two timed separately; ``IsolationForest(random_state=0)`` (one core) fits and scores (``score_samples``)
the same table in the same run. With ``--repeats`` above 1 each time is the median of the repeats.
``--param key=value`` (repeatable, values read by ``ast.literal_eval``) changes a detector
parameter, for quick checks only: the target is for the defaults.
Prints the times and the ratio of ours to IsolationForest's, and ends with one ``summary:`` line.

Target: fit + score of the default detector on 10,000 x 100 in at most 15 s on this machine's
2 cores (``--threads 2``).

    .venv/bin/python experiments/bench_detector.py
    .venv/bin/python experiments/bench_detector.py --rows 300 --columns 5
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

from pyro_vae.novelty import PARAMETERS, NoveltyDetector

TARGET_SECONDS = 15.0


def table(rows: int, columns: int) -> np.ndarray:
    """The synthetic low-rank table (10 factors plus 10 % noise)."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(rows, 10)) @ rng.normal(size=(10, columns)) + 0.1 * rng.normal(size=(rows, columns))


def parse_param(text: str) -> tuple[str, object]:
    """``key=value`` -> ``(key, ast.literal_eval(value))`` (the raw text if it is no literal)."""
    key, _, value = text.partition("=")
    if key not in PARAMETERS or key == "random_state" or not value:
        raise argparse.ArgumentTypeError(f"--param takes key=value for a NoveltyDetector parameter, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--columns", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats; each time is their median")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--param", type=parse_param, action="append", default=[], help="key=value for NoveltyDetector (repeatable)"
    )
    parser.add_argument("--out", default="runs/bench_detector", help="folder for results.md")
    args = parser.parse_args()
    params = dict(args.param)

    torch.set_num_threads(args.threads)
    X = table(args.rows, args.columns)
    fits, scores, forests = [], [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        detector = NoveltyDetector(random_state=0, **params).fit(X)
        fitted = time.perf_counter()
        detector.score_samples(X)
        scored = time.perf_counter()
        IsolationForest(random_state=0).fit(X).score_samples(X)
        forests.append(time.perf_counter() - scored)
        fits.append(fitted - start)
        scores.append(scored - fitted)
        print(
            f"repeat {repeat + 1}: NoveltyDetector fit {fits[-1]:.1f} s, score {scores[-1]:.1f} s; "
            f"IsolationForest fit + score {forests[-1]:.2f} s",
            flush=True,
        )
    fit_seconds, score_seconds = statistics.median(fits), statistics.median(scores)
    detector_seconds = statistics.median([f + s for f, s in zip(fits, scores, strict=True)])
    iforest_seconds = statistics.median(forests)
    ratio = detector_seconds / iforest_seconds
    verdict = ("within" if detector_seconds <= TARGET_SECONDS else "over") + f" the {TARGET_SECONDS:.0f} s target"
    if params:
        verdict += ", which is for the defaults, not " + ", ".join(f"{key}={value!r}" for key, value in params.items())
    report = (
        f"{args.rows:,} x {args.columns}, {args.threads} threads: NoveltyDetector fit + score {detector_seconds:.1f} s "
        f"(fit {fit_seconds:.1f} s, score {score_seconds:.1f} s; {verdict}), "
        f"IsolationForest {iforest_seconds:.2f} s: {ratio:.1f} times as long"
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text(f"# Detector speed: bench_detector.py\n\n{report}\n")
    print(report)
    print(
        f"summary: detector_seconds={detector_seconds:.2f} fit_seconds={fit_seconds:.2f} "
        f"score_seconds={score_seconds:.2f} iforest_seconds={iforest_seconds:.3f} ratio_to_iforest={ratio:.1f} "
        f"rows={args.rows} columns={args.columns} threads={args.threads} repeats={args.repeats} "
        f"defaults={'no' if params else 'yes'}"
    )


if __name__ == "__main__":
    main()
