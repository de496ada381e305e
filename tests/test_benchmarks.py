"""The benchmark scripts: `--help` works and writes nothing (a section of docs/BENCHMARKS.md is written only
with --write-docs)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "report.py")


def tree_digest() -> str:
    """docs/BENCHMARKS.md and the files under benchmarks/ (its data/ aside), with their names."""
    files = [ROOT / "docs" / "BENCHMARKS.md", *sorted((ROOT / "benchmarks").rglob("*"))]
    h = hashlib.sha256()
    for f in files:
        rel = f.relative_to(ROOT)
        if f.is_file() and rel.parts[:2] != ("benchmarks", "data") and "__pycache__" not in rel.parts:
            h.update(str(rel).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_writes_nothing(script):
    before = tree_digest()
    run = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
    assert tree_digest() == before


def test_every_docs_writer_asks_first():
    for script in SCRIPTS:
        text = (ROOT / "benchmarks" / script).read_text()
        if "write_section(" in text:
            assert "add_docs_flag(parser)" in text and "args.write_docs" in text, script


def test_forgetting_pareto_front_and_goal():
    """benchmarks/forgetting.py places each (arm, α) against naive: rise ratio, gain share, Pareto front, goal."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import forgetting
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    before = {"model": "before", "old": 40.0, "new": 50.0}
    rows = [
        {
            "arm": "naive",
            "seed": 0,
            "points": [
                before,
                {"model": "after", "old": 50.0, "new": 30.0},
                {"model": "α=0.6 (kept)", "old": 41.0, "new": 31.0},
            ],
        },
        {"arm": "kl", "seed": 0, "points": [before, {"model": "after", "old": 45.0, "new": 32.0}]},
    ]
    points = {p["name"]: p for p in forgetting.place(rows)}
    assert points["naive"]["rise_ratio"] == 1.0 and points["naive"]["gain_share"] == 1.0
    assert points["naive α=0.6"]["rise_ratio"] == pytest.approx(0.1) and points["naive α=0.6"]["gain_share"] == 0.95
    assert points["naive α=0.6"]["goal"] and not points["kl"]["goal"]
    # kl (rise 5, gain 18) is dominated by naive α=0.6 (rise 1, gain 19); naive (the most gain) is on the front
    assert points["naive α=0.6"]["pareto"] and points["naive"]["pareto"] and not points["kl"]["pareto"]
    (check,) = forgetting.confirmations(rows, ["naive"])
    assert check["kept"] == "α=0.6" and check["goal"]


def test_pruning_table_is_in_the_docs_with_every_arm_at_both_budgets():
    """docs/BENCHMARKS.md holds benchmarks/pruning.py's table as its results file renders it: 20 % and 40 %,
    width, depth and the SVD chain, each with perplexity after pruning and after KD and the latency columns."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pruning
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = json.loads((ROOT / "benchmarks" / "results" / "pruning.json").read_text())
    docs = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert pruning.report(results) in docs
    arms = {(r["removed_target"], r["arm"]) for r in results["rows"]}
    assert {(s, a) for s in (0.2, 0.4) for a in ("width", "depth-bi", "svd")} <= arms
    assert all(r["healed"]["old_eval"]["perplexity"] > 0 for r in results["rows"])
    assert results["model"] in results["speed"] and all(r["shapes"] in results["speed"] for r in results["rows"])


def test_speech_table_is_in_the_docs_with_both_ratios_with_and_without_distillation():
    """docs/BENCHMARKS.md holds benchmarks/speech.py's table as its results file renders it: the dense Whisper and
    the 20 % / 40 % compressed ones, with and without feature distillation, each with a WER on the same recordings."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import speech
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = json.loads((ROOT / "benchmarks" / "results" / "speech.json").read_text())
    assert speech.report(results) in (ROOT / "docs" / "BENCHMARKS.md").read_text()
    arms = {(r["ratio"], r["arm"]) for r in results["rows"]}
    assert arms == {(0.0, "dense")} | {(x, a) for x in (0.2, 0.4) for a in ("compress", "compress+fd")}
    assert len({r["wer"]["recordings"] for r in results["rows"]}) == 1  # the same held-out recordings
    assert all(r["wer"]["wer"] > 0 for r in results["rows"])
