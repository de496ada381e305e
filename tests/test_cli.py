"""One entry point: the console script and `python -m llm4all_recipes` are the same `cli.main`."""

import importlib
import subprocess
import sys
from importlib.metadata import entry_points

from llm4all_recipes import cli


def test_console_script_is_cli_main():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "llm4all"]
    assert script.value == "llm4all_recipes.cli:main"
    assert script.load() is cli.main


def test_python_dash_m_runs_the_same_main():
    module = importlib.import_module("llm4all_recipes.__main__")
    assert module.main is cli.main


def test_usage_and_exit_codes(capsys):
    assert cli.main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out
    assert cli.main([]) == 2


def test_lighteval_is_imported_lazily():
    # the CLI and the training stages must not pull lighteval (slow, and it reaches the network at import)
    code = (
        "import sys, llm4all_recipes.cli, llm4all_recipes.stages.sft, llm4all_recipes.stages.tiny_model; "
        "print('lighteval' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_usage_lists_every_stage():
    from llm4all_recipes.configs import RECIPES

    for stage in RECIPES:
        assert f"  {stage} " in cli.USAGE, stage
