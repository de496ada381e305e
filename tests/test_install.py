"""A non-editable install (`pip install .`): the wheel ships what the package reads at run time (chat
templates, prompts, card templates) and renders a card from outside the checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_renders_cards_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("llm4all_recipes-*.whl")
    with zipfile.ZipFile(wheel) as z:  # the links in data/cards/ became the templates themselves
        assert z.read("llm4all_recipes/data/cards/model_card.md") == (ROOT / "model_cards/model_card.md").read_bytes()
        assert (
            z.read("llm4all_recipes/data/cards/dataset_card.md")
            == (ROOT / "dataset_cards/dataset_card.md").read_bytes()
        )
        assert "llm4all_recipes/data/chat_templates/chatml.jinja" in z.namelist()
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    code = (
        "import llm4all_recipes.cards as c, pathlib, sys\n"
        "assert pathlib.Path(c.__file__).is_relative_to(sys.argv[1]), c.__file__\n"
        "md = c.render_model_card(stage='sft', model_name='m', summary='A summary.', training='Trained.', "
        "lineage=[{'stage': 'sft', 'output_dir': 'outputs/m'}])\n"
        "assert md.startswith('---') and 'A summary.' in md, md[:500]\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
