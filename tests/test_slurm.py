"""recipes/launch.slurm, executed: stand-ins for `srun`, `scontrol`, `nvidia-smi` and `accelerate` on PATH record
what the script runs, so the `accelerate launch` line it builds is checked word for word (the sbatch lines of
every README included), with and without extra arguments."""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "launch.slurm"

STAND_INS = {
    # 8 GPUs on each node
    "nvidia-smi": 'for i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done\n',
    # a long node list: a reader that stops at the first line (head -n 1) makes the writer die of SIGPIPE, which
    # `set -o pipefail` turns into exit 141; the script must read it whole
    "scontrol": 'test "$1 $2" = "show hostnames" && printf "node-a\\nnode-b\\n" && seq -f "node-%g" 100000\n',
    # srun runs its command once, as node 0 would (its options dropped)
    "srun": 'while [ "${1#--}" != "$1" ]; do shift; done\nSLURM_NODEID=0 exec "$@"\n',
    # accelerate records its argv, one JSON list per call
    "accelerate": 'python3 -c \'import json, sys; print(json.dumps(sys.argv[1:]))\' "$@" >> "$RECORD"\n',
}


def launch(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "RECORD": str(tmp_path / "accelerate.jsonl"),
        "SLURM_SUBMIT_DIR": str(tmp_path),  # no .venv there: nothing else is put on PATH
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node-[a-b]",
    }
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60)


def recorded(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "accelerate.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def expected(config: str, stage: str, recipe: str, *extra: str) -> list[str]:
    return [
        "launch",
        "--config_file",
        config,
        "--num_machines",
        "2",
        "--num_processes",
        "16",
        "--machine_rank",
        "0",
        "--main_process_ip",
        "node-a",
        "--main_process_port",
        "29500",
        "-m",
        "llm4all_recipes",
        stage,
        "--config",
        recipe,
        *extra,
    ]


def test_launch_without_extra_arguments_passes_no_empty_word(tmp_path):
    """The bug of every README sbatch line: no extra argument used to reach the stage as one empty argument."""
    cfg, recipe = "recipes/accelerate_configs/zero3.yaml", "recipes/llama-3.2-1b/cpt/replay-kl.yaml"
    done = launch(tmp_path, "cpt", recipe, cfg)
    assert done.returncode == 0, done.stderr
    assert recorded(tmp_path) == [expected(cfg, "cpt", recipe)]
    assert "on 2 node(s) x 8 GPU(s), main node-a:29500" in done.stdout


def test_launch_passes_extra_arguments_word_for_word(tmp_path):
    cfg, recipe = "recipes/accelerate_configs/zero3.yaml", "recipes/my models/kd/heal.yaml"
    extra = ["--learning_rate", "1e-5", "--run_name", "two words; $HOME `id`", "--datasets", '["a b.jsonl"]']
    done = launch(tmp_path, "kd", recipe, cfg, *extra)
    assert done.returncode == 0, done.stderr
    assert recorded(tmp_path) == [expected(cfg, "kd", recipe, *extra)]


def test_launch_without_its_three_arguments_shows_usage(tmp_path):
    done = launch(tmp_path, "kd", "recipes/x/kd/heal.yaml")
    assert done.returncode == 2 and "usage: sbatch" in done.stderr
    assert not (tmp_path / "accelerate.jsonl").exists()


def sbatch_lines() -> list[str]:
    lines = []
    for readme in [ROOT / "README.md", *sorted((ROOT / "recipes").glob("*/README.md"))]:
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("sbatch ") and "<" not in line:
                lines.append(line.split("  #")[0].strip())
    return lines


@pytest.mark.parametrize("line", sbatch_lines())
def test_every_readme_sbatch_line_launches_its_stage_and_recipe(tmp_path, line):
    words = shlex.split(line)
    stage, recipe, cfg, *extra = words[words.index("recipes/launch.slurm") + 1 :]
    assert (ROOT / recipe).is_file() and (ROOT / cfg).is_file(), line
    assert re.fullmatch(r"recipes/[^/]+/" + re.escape(stage) + r"/[^/]+\.yaml", recipe), line
    done = launch(tmp_path, stage, recipe, cfg, *extra)
    assert done.returncode == 0, done.stderr
    assert recorded(tmp_path) == [expected(cfg, stage, recipe, *extra)]
