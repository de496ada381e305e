"""Launchers, in real subprocesses (the only subprocess tests of the suite): SFT in 2 CPU processes
through torchrun (gloo), and `accelerate launch` with the shipped cpu.yaml config."""

import json
import os
import subprocess
import sys

from transformers import AutoModelForCausalLM

RECIPE = "recipes/tiny-llama/sft/chat.yaml"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd, timeout=300):
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_sft_in_two_cpu_processes_with_torchrun(tiny_model, tmp_path):
    out = tmp_path / "ddp"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "llm4all_recipes",
            "sft",
            "--config",
            RECIPE,
            "--model_name_or_path",
            str(tiny_model),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--save_steps",
            "3",
            "--logging_steps",
            "1",
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["train"]["global_step"] == 3
    lineage = json.loads((out / "lineage.json").read_text())["stages"]
    assert lineage[-1]["command"].startswith("accelerate launch --num_processes 2")
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    assert not (tmp_path / "ddp.tmp").exists()


def test_accelerate_launch_with_cpu_config_writes_a_loadable_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "accel"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    _run(
        [
            accelerate,
            "launch",
            "--config_file",
            "recipes/accelerate_configs/cpu.yaml",
            "-m",
            "llm4all_recipes",
            "sft",
            "--config",
            RECIPE,
            "--model_name_or_path",
            str(tiny_model),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == 2048
    assert json.loads((out / "metrics.json").read_text())["train"]["global_step"] == 3
