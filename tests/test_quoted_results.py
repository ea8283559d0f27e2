"""Numbers quoted in README.md and docs/ match the experiments' stored summary lines, and the tool
that rewrites them (experiments/quote_results.py) finds every kind of stale or broken quote."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("quote_results", ROOT / "experiments" / "quote_results.py")
quote_results = importlib.util.module_from_spec(_spec)
sys.modules["quote_results"] = quote_results
_spec.loader.exec_module(quote_results)


def test_every_marked_number_matches_its_results_file():
    """`make quote` has been run since the last change to docs/results/ or to a marked number."""
    stale, broken = quote_results.quote_all(quote_results.documents(ROOT), ROOT / "docs" / "results", write=False)
    problems = [quote.describe() for quote in stale + broken]
    assert not problems, "run `make quote` (or fix the marker):\n" + "\n".join(problems)


def test_the_readme_quotes_every_stored_result_and_every_result_can_be_rerun():
    """Each results file is quoted somewhere and registered (so `make results NAME` redoes it);
    the README quotes many of them (a README stripped of its markers would pass the test above)."""
    results = {path.stem for path in (ROOT / "docs" / "results").glob("*.txt")}
    quoted: dict[Path, set[str]] = {}
    for path in quote_results.documents(ROOT):
        quotes = quote_results.find_quotes(path.read_text(), path, ROOT / "docs" / "results")
        quoted[path] = {quote.reference.split(":", 1)[0] for quote in quotes}
    assert results <= set(quote_results.EXPERIMENTS), results - set(quote_results.EXPERIMENTS)
    assert results <= set().union(*quoted.values()), results - set().union(*quoted.values())
    readme = quoted[ROOT / "README.md"]
    assert {"importance_sampling_gap", "pca_vs_autoencoder", "adbench", "mnist_nll", "bench_train"} <= readme
    assert len(readme) >= 12


@pytest.mark.parametrize("name", sorted(quote_results.EXPERIMENTS))
def test_every_registered_experiment_takes_the_output_folder_the_results_command_passes(name):
    """`quote_results.py run NAME` calls the script with --out; a script without it fails there."""
    source = (ROOT / "experiments" / quote_results.EXPERIMENTS[name].script).read_text()
    assert '"--out"' in source, f"experiments/{quote_results.EXPERIMENTS[name].script} has no --out option"


@pytest.mark.parametrize("path", sorted((ROOT / "docs" / "results").glob("*.txt")), ids=lambda path: path.stem)
def test_results_files_say_where_every_run_came_from(path):
    runs = quote_results.read_results(path)
    for run in runs:
        assert run.comments, f"{path.name}: a run without a '#' line saying which run and date it is"
        assert any(char.isdigit() for char in " ".join(run.comments))  # a date at least
        assert run.values


# --- the tool on small documents -------------------------------------------------------------


@pytest.fixture
def results_dir(tmp_path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "demo.txt").write_text(
        "# run 1 of 2026-01-01\n"
        "summary: acc=0.9512 minutes=75.0 gap=-9.80 codes=-0.63,0.41 ratio=1.04\n"
        "# run 2 of 2026-01-02\n"
        "summary: acc=0.9600 minutes=120.0 gap=-9.92 ratio=1.02 excess=1.24\n"
    )
    return folder


def quotes_of(text: str, results_dir: Path):
    return quote_results.find_quotes(text, Path("doc.md"), results_dir)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy 96.00<!-- demo:acc *100 .2f --> %", "96.00"),  # the last run by default
        ("accuracy 95.12<!-- demo:acc run=1 *100 .2f --> %", "95.12"),
        ("took 1.2<!-- demo:minutes run=1 /60 .1f --> hours", "1.2"),
        ("cardio -9.8<!-- demo:gap run=1 .1f -->", "-9.8"),
        ("codes (0.41<!-- demo:codes[1] run=1 .2f -->)", "0.41"),
        ("within 1.3<!-- demo:excess ceil .1f --> %", "1.3"),  # 1.24 rounded up, so 'within' holds
        ("**0.96<!-- demo:acc .2f -->**", "0.96"),
    ],
)
def test_a_current_number_is_not_stale(results_dir, text, expected):
    (quote,) = quotes_of(text, results_dir)
    assert quote.error is None, quote.error
    assert (quote.quoted, quote.expected, quote.stale) == (expected, expected, False)


def test_a_range_of_runs_and_its_signs(results_dir):
    text = "ratios 1.02<!-- demo:ratio min .2f -->-1.04<!-- demo:ratio max .2f -->x"
    low, high = quotes_of(text, results_dir)
    assert (low.quoted, high.quoted) == ("1.02", "1.04")  # the '-' between them is no minus sign
    assert not low.stale and not high.stale


def test_a_stale_number_is_found_and_rewritten_with_the_markers_rounding(results_dir):
    text = "K = 1000: 91.3<!-- demo:acc *100 .1f --> nats and -9.9<!-- demo:gap run=1 .2f -->, end\n"
    quotes = quotes_of(text, results_dir)
    assert [(quote.quoted, quote.expected, quote.stale) for quote in quotes] == [
        ("91.3", "96.0", True),
        ("-9.9", "-9.80", True),
    ]
    rewritten = quote_results.rewrite(text, quotes)
    assert rewritten == "K = 1000: 96.0<!-- demo:acc *100 .1f --> nats and -9.80<!-- demo:gap run=1 .2f -->, end\n"
    assert not any(quote.stale for quote in quotes_of(rewritten, results_dir))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1.0<!-- missing:acc .2f -->", "no results file"),
        ("1.0<!-- demo:nope .2f -->", "no 'nope'"),
        ("1.0<!-- demo:acc run=3 .2f -->", "holds 2"),
        ("1.0<!-- demo:acc -->", "no format spec"),
        ("1.0<!-- demo:acc .2f sideways -->", "unknown marker option"),
        ("1.0<!-- demo:codes[5] run=1 .2f -->", "no item 5"),
        ("b128<!-- demo:acc .2f -->", "no number"),
        ("words<!-- demo:acc .2f -->", "no number"),
    ],
)
def test_a_marker_that_cannot_be_resolved_is_reported(results_dir, text, error):
    (quote,) = quotes_of(text, results_dir)
    assert quote.error is not None and error in quote.error
    assert not quote.stale


def test_markers_in_code_and_plain_comments_are_left_alone(results_dir):
    text = textwrap.dedent(
        """\
        `1.0<!-- demo:acc .2f -->` and <!-- a note: not a marker -->
        ```
        2.0<!-- demo:acc .2f -->
        ```
        """
    )
    assert quotes_of(text, results_dir) == []


def test_results_files_are_parsed_strictly(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("# a run\nsummary: a=1\nloose text\n")
    with pytest.raises(ValueError, match="expected a '#' comment"):
        quote_results.read_results(path)
    path.write_text("# only comments\n")
    with pytest.raises(ValueError, match="no 'summary:' line"):
        quote_results.read_results(path)
    assert quote_results.last_summary_line("summary: a=1\nnoise\nsummary: a=2 b=x\nbye") == "summary: a=2 b=x"
    with pytest.raises(ValueError, match="no 'summary:' line"):
        quote_results.last_summary_line("nothing here")


def test_quote_checks_then_rewrites_a_tree(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "demo.txt").write_text("# 2026-01-01\nsummary: nll=86.8249\n")
    readme = tmp_path / "README.md"
    readme.write_text("NLL **86.90<!-- demo:nll .2f --> nats**\n")
    monkeypatch.setattr(quote_results, "ROOT", tmp_path)
    monkeypatch.setattr(quote_results, "RESULTS_DIR", tmp_path / "docs" / "results")

    assert quote_results.main(["quote", "--check"]) == 1
    assert "86.90 -> 86.82" in capsys.readouterr().out
    assert "86.90" in readme.read_text()  # --check writes nothing
    assert quote_results.main(["quote"]) == 0
    assert readme.read_text() == "NLL **86.82<!-- demo:nll .2f --> nats**\n"
    assert quote_results.main(["quote", "--check"]) == 0

    (tmp_path / "docs" / "results" / "demo.txt").unlink()
    assert quote_results.main(["quote", "--check"]) == 1
    assert "no results file" in capsys.readouterr().err


def test_run_stores_the_summary_line_and_copies_the_outputs(tmp_path, monkeypatch):
    script = tmp_path / "experiments" / "toy.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            """\
            import sys
            from pathlib import Path
            out = Path(sys.argv[sys.argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.md").write_text("![figure](figure.png)\\n")
            (out / "figure.png").write_bytes(b"png")
            print("summary: value=1.5 minutes=0.0")
            print("summary: value=2.5 minutes=0.0")
            sys.exit(int("--fail" in sys.argv))
            """
        )
    )
    copies = {"results.md": "docs/toy.md", "figure.png": "docs/toy_figure.png"}
    (tmp_path / "docs").mkdir()
    monkeypatch.setitem(quote_results.EXPERIMENTS, "toy", quote_results.Experiment("toy.py", (), copies))
    results = tmp_path / "docs" / "results"

    stored = quote_results.run_experiment("toy", code=tmp_path, root=tmp_path, results_dir=results)
    (run,) = quote_results.read_results(stored)
    assert run.values == {"value": "2.5", "minutes": "0.0"}
    assert "command: python experiments/toy.py --out runs/results/toy" in run.comments
    assert (tmp_path / "docs" / "toy.md").read_text() == "![figure](toy_figure.png)\n"  # linked by its new name
    assert (tmp_path / "docs" / "toy_figure.png").read_bytes() == b"png"

    monkeypatch.setitem(quote_results.EXPERIMENTS, "toy", quote_results.Experiment("toy.py", ("--fail",), copies))
    before = stored.read_text()
    with pytest.raises(SystemExit, match="exit status 1"):
        quote_results.run_experiment("toy", code=tmp_path, root=tmp_path, results_dir=results)
    assert stored.read_text() == before
