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
    run = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
    assert tree_digest() == before


def test_every_docs_writer_asks_first():
    for script in SCRIPTS:
        text = (ROOT / "benchmarks" / script).read_text()
        if "write_section(" in text:
            assert "add_docs_flag(parser)" in text and "args.write_docs" in text, script
