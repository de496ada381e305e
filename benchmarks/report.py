"""Write a benchmark's section into docs/BENCHMARKS.md, between `<!-- begin NAME -->` / `<!-- end NAME -->`
markers (replaced on rerun; appended the first time), with the command that produced it."""

import platform
import re
import shlex
import sys
from datetime import date
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Every table below was produced by the command written above it, on the machine it names; rerun the
command to refresh the table (sections are replaced in place). Speed and memory are measured here, never
asserted by the test suite.
"""


def add_docs_flag(parser) -> None:
    """Every benchmark writes its docs/BENCHMARKS.md section only when asked (so --help and trial runs don't)."""
    parser.add_argument(
        "--write-docs", action="store_true", help="write this benchmark's section of docs/BENCHMARKS.md"
    )


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine() -> str:
    import torch

    threads = torch.get_num_threads()
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()}, {threads} threads)"
    )
    return f"{device}, torch {torch.__version__}, {date.today().isoformat()}"


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    block = f"<!-- begin {name} -->\n{body.rstrip()}\n<!-- end {name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(rf"<!-- begin {re.escape(name)} -->.*?<!-- end {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
