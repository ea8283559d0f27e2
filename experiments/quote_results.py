"""Numbers quoted in README.md and docs/ come from the experiments' ``summary:`` lines.

Every experiment's summary line is stored in ``docs/results/<name>.txt`` (one or more runs, each
``#`` lines saying where it came from, then its ``summary: key=value ...`` line). A quoted number is
marked by an HTML comment right after it, which Markdown does not render::

    91.3<!-- importance_sampling_gap:is_k1000 .1f -->

After ``name:key`` (``key[i]``: the i-th item of a comma-separated value) come options, in any
order: the Python format spec the number is written with (required: ``.1f``, ``+.2f``, ``.0f``),
``*F`` or ``/F`` to scale the stored value first (``*100`` for a percentage, ``/60`` for minutes),
``run=N`` for the N-th run of the file (default: the last), ``min`` or ``max`` for the smallest
or largest value over all its runs, ``ceil`` to round up (for a bound: "within 1.3 %"). Markers
inside code spans and fenced code are ignored.

    python experiments/quote_results.py quote            # rewrite every marked number
    python experiments/quote_results.py quote --check    # only report stale numbers (exit 1)
    python experiments/quote_results.py run NAME ...     # re-run these experiments, store, quote
    python experiments/quote_results.py run              # run those whose results file is missing

``make results`` and ``make quote`` call the last two and the first. ``run`` replaces a results
file by the one fresh run, refreshes the copies in docs/ of the figures and tables the script
wrote, and then rewrites the docs; it prints every number it changed, so that the prose around it
can be checked.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "results"
DOCUMENTS = ("README.md", "docs/**/*.md")


@dataclass(frozen=True)
class Experiment:
    """How to produce one results file: the script, its arguments, and the outputs copied to docs/."""

    script: str
    args: tuple[str, ...] = ()
    copies: dict[str, str] = field(default_factory=dict)  # file in --out -> path under the repository


def _gallery(name: str, *figures: str, renamed: dict[str, str] | None = None) -> dict[str, str]:
    copies = {"results.md": f"docs/gallery/{name}.md"}
    copies |= {figure: f"docs/gallery/{figure}" for figure in figures}
    copies |= {source: f"docs/gallery/{target}" for source, target in (renamed or {}).items()}
    return copies


EXPERIMENTS: dict[str, Experiment] = {
    "importance_sampling_gap": Experiment("importance_sampling_gap.py"),
    "pca_vs_autoencoder": Experiment(
        "pca_vs_autoencoder.py", copies=_gallery("pca_vs_autoencoder", renamed={"toy.png": "pca_toy.png"})
    ),
    "sampling_ae_vs_vae": Experiment(
        "sampling_ae_vs_vae.py", copies=_gallery("sampling_ae_vs_vae", renamed={"samples.png": "sampling_samples.png"})
    ),
    "manifold": Experiment(
        "manifold.py", copies=_gallery("manifold", "frey_manifold.png", "mnist_manifold.png", "mnist_scatter.png")
    ),
    "beta_traversal": Experiment(
        "beta_traversal.py", copies=_gallery("beta_traversal", "beta1_traversal.png", "beta4_traversal.png")
    ),
    "attribute_edit": Experiment("attribute_edit.py", copies=_gallery("attribute_edit", "attribute_edit.png")),
    "debias": Experiment("debias.py", copies=_gallery("debias", "debias.png")),
    "conditional_mnist": Experiment(
        "conditional_mnist.py",
        ("--data-dir", "../shared/data/mnist"),
        {
            "results.md": "docs/conditional_mnist_results.md",
            "class_grid.png": "docs/conditional_mnist_class_grid.png",
            "style_transfer.png": "docs/conditional_mnist_style_transfer.png",
        },
    ),
    "conditional_mnist_adgm": Experiment(
        "conditional_mnist.py",
        (
            *("--data-dir", "../shared/data/mnist", "--semi-supervised", "adgm", "--semi-supervised-only"),
            *("--labels-per-class", "10", "--draws", "3", "--m2-epochs", "5", "--oversample", "100"),
        ),
        {"results.md": "docs/conditional_mnist_adgm_results.md"},
    ),
    "image_ood": Experiment(
        "image_ood.py",
        ("--seeds", "0,1,2"),
        {"results.md": "docs/image_ood_results.md", "typicality.png": "docs/image_ood_typicality.png"},
    ),
    "adbench": Experiment(
        "adbench.py",
        ("--data-dir", "../shared/data/adbench"),
        {"auroc.png": "docs/adbench_auroc.png", "results.md": "docs/adbench_results.md"},
    ),
    "bench_detector": Experiment("bench_detector.py"),
    "bench_train": Experiment("bench_train.py"),
    "bench_train_captured": Experiment("bench_train.py"),  # the runs since (d), the captured step, was timed too
    "bench_score": Experiment("bench_score.py"),
    "gan_vs_vae": Experiment(
        "gan_vs_vae.py", (), {"results.md": "docs/gan_vs_vae_results.md", "samples.png": "docs/gan_vs_vae_samples.png"}
    ),
    "gan_vs_vae_selection": Experiment(  # the VAE-GAN's weight, chosen on held-out training images
        "gan_vs_vae.py", ("--reference", "validation", "--sets", "mnist", "--seeds", "0", "--models", "vaegan")
    ),
    "bench_pythae": Experiment("bench_pythae.py", (), {"results.md": "docs/bench_pythae_results.md"}),
    "bench_adaptive_k": Experiment(
        "bench_adaptive_k.py", ("--threads", "1"), {"results.md": "docs/bench_adaptive_k_results.md"}
    ),
    "mnist_nll": Experiment("mnist_nll.py", ("--minutes", "60", "--threads", "1")),
    "mnist_nll_normal": Experiment(
        "mnist_nll.py", ("--minutes", "60", "--threads", "1", "--prior", "normal", "--latent-dim", "50")
    ),
    "mnist_nll_iwae": Experiment(
        "mnist_nll.py", ("--minutes", "60", "--threads", "1", "--loss", "iwae", "--particles", "5")
    ),
    "mnist_nll_dreg": Experiment(
        "mnist_nll.py", ("--minutes", "60", "--threads", "1", "--loss", "dreg", "--particles", "5")
    ),
    "hierarchical_samples": Experiment(
        "hierarchical_samples.py",
        ("--minutes", "4"),
        {"samples.png": "docs/hierarchical_samples.png", "results.md": "docs/hierarchical_samples_results.md"},
    ),
    "mnist_nll_hierarchical": Experiment(
        "mnist_nll.py", ("--minutes", "60", "--threads", "1", "--model", "hierarchical", "--layers", "2")
    ),
}


class QuoteError(ValueError):
    """A marker that cannot be resolved: no results file, no such key or run, a malformed option."""


# ---------------------------------------------------------------------------------------------
# Results files


@dataclass
class Run:
    comments: list[str]
    values: dict[str, str]


def parse_summary(line: str) -> dict[str, str]:
    """``summary: a=1 b=x`` -> ``{"a": "1", "b": "x"}``."""
    if not line.startswith("summary: "):
        raise ValueError(f"not a summary line: {line!r}")
    pairs = line.removeprefix("summary: ").split()
    if not pairs or any("=" not in pair for pair in pairs):
        raise ValueError(f"a summary line holds key=value pairs: {line!r}")
    return dict(pair.split("=", 1) for pair in pairs)


def read_results(path: Path) -> list[Run]:
    """The runs of a results file, oldest first."""
    runs, comments = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
        elif line.startswith("summary: "):
            runs.append(Run(comments, parse_summary(line)))
            comments = []
        else:
            raise ValueError(f"{path}:{number}: expected a '#' comment or a 'summary:' line, got {line!r}")
    if not runs:
        raise ValueError(f"{path}: no 'summary:' line")
    return runs


def last_summary_line(output: str) -> str:
    """The experiment's summary: its output's last line that starts with ``summary: ``."""
    lines = [line.strip() for line in output.splitlines() if line.startswith("summary: ")]
    if not lines:
        raise ValueError("the experiment printed no 'summary:' line")
    parse_summary(lines[-1])
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# Markers


MARKER = re.compile(
    r"<!--[ \t]*(?P<name>[A-Za-z_][\w.-]*):(?P<key>[A-Za-z_][\w.]*)(?:\[(?P<index>\d+)\])?"
    r"(?P<options>(?:[ \t]+[^\s>]+)*)[ \t]*-->"
)
MINUS = "\N{MINUS SIGN}"
NUMBER_BEFORE = re.compile(f"(?P<sign>[-{MINUS}+]?)" r"(?P<digits>\d+(?:,\d{3})*(?:\.\d+)?)\Z")
CODE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1|`[^`\n]+`", re.MULTILINE | re.DOTALL)
FORMAT_SPEC = re.compile(r"[+\- ]?,?(?:\.\d+)?[fe%]")


@dataclass
class Marker:
    name: str
    key: str
    index: int | None
    spec: str
    scale: float = 1.0
    run: int | None = None
    reduce: str | None = None
    ceil: bool = False

    @classmethod
    def parse(cls, name: str, key: str, index: str | None, options: str) -> Marker:
        marker = cls(name, key, None if index is None else int(index), "")
        for option in options.split():
            if option in ("min", "max"):
                marker.reduce = option
            elif option == "ceil":
                marker.ceil = True
            elif option.startswith("run="):
                marker.run = int(option.removeprefix("run="))
                if marker.run < 1:
                    raise QuoteError(f"run= counts from 1: {option!r}")
            elif option[0] in "*/":
                factor = float(option[1:])
                marker.scale *= factor if option[0] == "*" else 1 / factor
            elif FORMAT_SPEC.fullmatch(option):
                if marker.spec:
                    raise QuoteError(f"two format specs: {marker.spec!r} and {option!r}")
                marker.spec = option
            else:
                raise QuoteError(f"unknown marker option {option!r}")
        if not marker.spec:
            raise QuoteError(f"marker {name}:{key} states no format spec (e.g. .2f)")
        if marker.ceil and not marker.spec.endswith("f"):
            raise QuoteError(f"marker {name}:{key}: ceil needs a fixed-point spec such as .1f")
        if marker.reduce and marker.run:
            raise QuoteError(f"marker {name}:{key}: run= and {marker.reduce} exclude each other")
        return marker

    def value(self, runs: list[Run]) -> float:
        """The stored value this marker quotes, scaled."""
        if self.run is not None and self.run > len(runs):
            raise QuoteError(f"{self.name}: the marker asks for run {self.run}, the results file holds {len(runs)}")
        chosen = runs if self.reduce else [runs[(self.run or len(runs)) - 1]]
        values = []
        for run in chosen:
            if self.key not in run.values:
                if self.reduce:
                    continue
                raise QuoteError(f"{self.name}: no {self.key!r} in its summary line ({', '.join(run.values)})")
            text = run.values[self.key]
            if self.index is not None:
                items = text.split(",")
                if self.index >= len(items):
                    raise QuoteError(f"{self.name}: {self.key}={text} has no item {self.index}")
                text = items[self.index]
            try:
                values.append(float(text) * self.scale)
            except ValueError:
                raise QuoteError(f"{self.name}: {self.key}={text} is not a number") from None
        if not values:
            raise QuoteError(f"{self.name}: no run holds {self.key!r}")
        return {"min": min, "max": max}.get(self.reduce, lambda v: v[0])(values)

    def format(self, runs: list[Run]) -> str:
        value = self.value(runs)
        if not math.isfinite(value):
            raise QuoteError(f"{self.name}: {self.key} is {value}")
        if self.ceil:
            digits = int(self.spec.rsplit(".", 1)[1][:-1]) if "." in self.spec else 0
            value = math.ceil(round(value * 10**digits, 9)) / 10**digits
        return format(value, self.spec)


@dataclass
class Quote:
    """One marked number in a document: where it is, what it says, what the results say."""

    path: Path
    line: int
    start: int  # span of the quoted number in the document's text
    end: int
    quoted: str
    reference: str  # the marker's text, e.g. "importance_sampling_gap:is_k1000 .1f"
    expected: str | None = None
    error: str | None = None

    @property
    def stale(self) -> bool:
        return self.error is None and self.expected != self.quoted

    def describe(self) -> str:
        where = f"{self.path}:{self.line}"
        if self.error:
            return f"{where}: {self.quoted or '(no number)'} <!-- {self.reference} -->: {self.error}"
        return f"{where}: {self.quoted} -> {self.expected} ({self.reference})"


def _code_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in CODE.finditer(text)]


def find_quotes(text: str, path: Path, results_dir: Path) -> list[Quote]:
    """Every marker of ``text`` with its number, resolved against the results files in ``results_dir``."""
    code = _code_spans(text)
    cache: dict[str, list[Run] | QuoteError] = {}
    quotes = []
    for match in MARKER.finditer(text):
        if any(start <= match.start() < end for start, end in code):
            continue
        reference = " ".join(match.group(0)[4:-3].split())
        line = text.count("\n", 0, match.start()) + 1
        before = NUMBER_BEFORE.search(text, max(0, match.start() - 40), match.start())
        start = match.start()
        if before is not None:
            start = before.start("digits")
            preceding = text[before.start() - 1] if before.start() > 0 else " "
            if before.group("sign") and not (preceding.isalnum() or preceding in ">."):
                start = before.start()
        if before is None or (start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._")):
            quotes.append(Quote(path, line, match.start(), match.start(), "", reference, error="no number before it"))
            continue
        quote = Quote(path, line, start, match.start(), text[start : match.start()], reference)
        name = match.group("name")
        try:
            marker = Marker.parse(name, match.group("key"), match.group("index"), match.group("options"))
            if name not in cache:
                results = results_dir / f"{name}.txt"
                try:
                    cache[name] = read_results(results)
                except FileNotFoundError:
                    cache[name] = QuoteError(f"no results file {results}")
                except ValueError as error:
                    cache[name] = QuoteError(str(error))
            runs = cache[name]
            if isinstance(runs, QuoteError):
                raise runs
            expected = marker.format(runs)
            if quote.quoted.startswith(MINUS):  # keep the document's minus sign
                expected = expected.replace("-", MINUS, 1)
            quote.expected = expected
        except QuoteError as error:
            quote.error = str(error)
        quotes.append(quote)
    return quotes


def rewrite(text: str, quotes: list[Quote]) -> str:
    """``text`` with every stale quoted number replaced by its expected value."""
    for quote in sorted(quotes, key=lambda q: q.start, reverse=True):
        if quote.stale:
            text = text[: quote.start] + quote.expected + text[quote.end :]
    return text


def documents(root: Path = ROOT) -> list[Path]:
    paths = {path for pattern in DOCUMENTS for path in root.glob(pattern)}
    return sorted(path for path in paths if path.is_file())


def quote_all(paths: list[Path], results_dir: Path, write: bool) -> tuple[list[Quote], list[Quote]]:
    """(stale, broken) markers of ``paths``; with ``write``, the stale ones are rewritten in place."""
    stale, broken = [], []
    for path in paths:
        text = path.read_text()
        quotes = find_quotes(text, path, results_dir)
        stale += [quote for quote in quotes if quote.stale]
        broken += [quote for quote in quotes if quote.error]
        if write and any(quote.stale for quote in quotes):
            path.write_text(rewrite(text, quotes))
    return stale, broken


# ---------------------------------------------------------------------------------------------
# Running experiments


def code_version(tree: Path) -> str:
    """The commit of ``tree`` (a checkout, or a :func:`snapshot`), and whether the code it runs
    differs from it."""
    if (tree / "COMMIT").exists():
        return f"commit {(tree / 'COMMIT').read_text().strip()} (a clean copy of it)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "pyro_vae", "models", "guides", "experiments"],
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in changed if line.strip()]
    return f"commit {commit}" + (f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def machine() -> str:
    """``2 CPUs (AMD EPYC)``: what a run's times depend on."""
    model = platform.processor() or platform.machine()
    try:
        names = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model})"


def snapshot(root: Path = ROOT) -> Path:
    """A clean copy of the committed code (``git archive HEAD``) under ``runs/snapshot/``, so that
    experiments run on a known commit while the working tree is being edited."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = root / "runs" / "snapshot" / commit
    if not (tree / "COMMIT").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        # the installed package maps pyro_vae.models and .guides to this checkout's folders; links
        # in the copy's package make the copy's own folders found first
        for package in ("models", "guides"):
            (tree / "pyro_vae" / package).symlink_to(Path("..") / package)
        (tree / "COMMIT").write_text(commit + "\n")
    return tree


def run_experiment(name: str, code: Path = ROOT, root: Path = ROOT, results_dir: Path = RESULTS_DIR) -> Path:
    """Run one experiment at its registered arguments, with the scripts and pyro_vae of ``code``
    (this checkout or a :func:`snapshot`), in ``root``; store its summary line in ``results_dir``
    and copy its outputs into ``root``."""
    experiment = EXPERIMENTS[name]
    out = Path("runs") / "results" / name
    command = ["experiments/" + experiment.script, *experiment.args, "--out", str(out)]
    print(f"$ python {shlex.join(command)}" + (f"  (code of {code})" if code != root else ""), flush=True)
    started = time.perf_counter()
    environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, str(code / command[0]), *command[1:]],
        cwd=root,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if process.wait() != 0:
        raise SystemExit(f"{name} failed with exit status {process.returncode}; {results_dir / name}.txt unchanged")
    summary = last_summary_line("".join(lines))
    minutes = (time.perf_counter() - started) / 60
    header = [
        f"# {experiment.script} at the registered arguments, run by experiments/quote_results.py on "
        f"{datetime.date.today().isoformat()}, {machine()}, {minutes:.1f} min",
        f"# code: {code_version(code)}",
        f"# command: python {shlex.join(command)}",
    ]
    results_dir.mkdir(parents=True, exist_ok=True)
    target = results_dir / f"{name}.txt"
    target.write_text("\n".join([*header, summary]) + "\n")
    renamed = {Path(source).name: Path(dest).name for source, dest in experiment.copies.items()}
    for source, dest in experiment.copies.items():
        produced, destination = root / out / source, root / dest
        if source.endswith(".md"):  # the copy links to the copied figures by their new names
            text = produced.read_text()
            for old, new in renamed.items():
                text = text.replace(f"]({old})", f"]({new})")
            destination.write_text(text)
        else:
            shutil.copyfile(produced, destination)
    print(f"stored {target.relative_to(root)}: {summary}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    quote = commands.add_parser("quote", help="rewrite every marked number from the stored results")
    quote.add_argument("--check", action="store_true", help="write nothing; exit 1 if a number is stale")
    run = commands.add_parser("run", help="run experiments, store their summary lines, then quote")
    run.add_argument("names", nargs="*", help=f"of {', '.join(EXPERIMENTS)} (default: those without results)")
    run.add_argument(
        "--snapshot",
        action="store_true",
        help="run the committed code (a `git archive` of HEAD under runs/snapshot/), not the working tree's",
    )
    commands.add_parser("list", help="the registered experiments and their results files")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, experiment in EXPERIMENTS.items():
            path = RESULTS_DIR / f"{name}.txt"
            state = f"{len(read_results(path))} run(s)" if path.exists() else "missing"
            print(f"{name:24s} {state:10s} experiments/{experiment.script} {shlex.join(experiment.args)}")
        return 0
    if args.command == "run":
        unknown = [name for name in args.names if name not in EXPERIMENTS]
        if unknown:
            parser.error(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}")
        names = args.names or [name for name in EXPERIMENTS if not (RESULTS_DIR / f"{name}.txt").exists()]
        code = snapshot(ROOT) if args.snapshot and names else ROOT
        for name in names:
            run_experiment(name, code=code, root=ROOT, results_dir=RESULTS_DIR)
    write = not (args.command == "quote" and args.check)
    stale, broken = quote_all(documents(ROOT), RESULTS_DIR, write=write)
    for quote in stale:
        print(("stale: " if not write else "rewrote ") + quote.describe().replace(str(ROOT) + "/", ""))
    for quote in broken:
        print("broken: " + quote.describe().replace(str(ROOT) + "/", ""), file=sys.stderr)
    if not stale and not broken:
        print("every marked number matches its results file")
    return 1 if broken or (stale and not write) else 0


if __name__ == "__main__":
    sys.exit(main())
