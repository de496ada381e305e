"""The README's commands stay true: every command line of its ```bash blocks names a real stage, a recipe or
file that exists and a make target that exists; the ones that run offline without outputs of other stages are
run here (the others are run by the stage tests and by `make demo`)."""

import re
import shlex
from pathlib import Path

import pytest

from llm4all_recipes.cli import main
from llm4all_recipes.configs import RECIPES

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_every_readme_command_names_what_exists():
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    commands = readme_commands()
    assert len(commands) > 15
    for line in commands:
        words = shlex.split(line)
        if words[0] == "make":
            assert words[1] in phony, line
            continue
        if "llm4all" in words:
            stage = words[words.index("llm4all") + 1]
        elif "llm4all_recipes" in words:
            stage = words[words.index("llm4all_recipes") + 1]
        elif words[0] == "sbatch":
            stage = words[words.index("recipes/launch.slurm") + 1]
        else:
            pytest.fail(f"a README command this test does not know: {line}")
        assert stage in RECIPES or stage in ("validate", "<stage>", "demo"), line
        for word in words:
            if "<" not in word and word.endswith((".yaml", ".slurm")):
                assert (ROOT / word).is_file(), f"{line}: {word} does not exist"


@pytest.mark.parametrize("stage", sorted(RECIPES))
def test_every_stage_help_runs(stage, capsys):
    """`llm4all <stage> --help`: every key of the stage's recipe, with its help."""
    assert main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: llm4all {stage}") and "--dry_run" in out


def test_readme_dataset_builds_run(tmp_path, tiny_model):
    """The README's build-dataset lines that need no network: the fixture calls, meetings, SUMM-RE layout
    (the tokenizer that sizes meeting chunks is the tiny default's, built by the session)."""
    for line in readme_commands():
        words = shlex.split(line)
        if words[:2] == ["llm4all", "build-dataset"] and "hub" not in words[-1]:
            out = tmp_path / Path(words[-1]).stem
            extra = (
                ["--tokenizer_name_or_path", str(tiny_model)]
                if "tokenizer_name_or_path" in Path(words[-1]).read_text()
                else []
            )
            assert main([*words[1:], "--output_dir", str(out), "--push_to_hub", "false", *extra]) == 0, line
            assert (out / "README.md").is_file() and (out / "dataset_dict.json").is_file()
