"""Run folders keep data safe: crash-safe resume after kill -9 at exact moments of a checkpoint save, one writer
per output folder, no resume of another recipe's run, only our own folders ever deleted, no secret in any
output file.

The kill tests stop a real subprocess at an exact point of `Trainer._save_checkpoint` (tests/fault/
sitecustomize.py: it writes a "ready" file there and waits), check that the folder is in the state the test is
about, then SIGKILL it: nothing races.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm4all_recipes.cli import main
from llm4all_recipes.errors import RecipeError
from llm4all_recipes.outputs import LOCK, MARKER, staged_output
from llm4all_recipes.parsing import parse_recipe

REPO = Path(__file__).resolve().parents[1]
FAULT = REPO / "tests" / "fault"
CPT = "recipes/tiny-llama/cpt/replay.yaml"
STEPS = [
    "--max_steps",
    "6",
    "--save_steps",
    "2",
    "--logging_steps",
    "1",
    "--max_length",
    "64",
    "--per_device_train_batch_size",
    "4",
    "--warmup_steps",
    "1",
    "--kl_coef",
    "0.5",
]


def cpt_argv(model, out, *extra):
    return [
        "cpt",
        "--config",
        CPT,
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        *STEPS,
        *extra,
    ]


def start_paused(argv, fault: str, tmp_path: Path, **env) -> tuple[subprocess.Popen, Path, Path]:
    """A subprocess running `llm4all argv` that stops at `fault` ("<step>:<phase>"); returns (proc, ready, go)."""
    ready, go = tmp_path / f"ready-{fault.replace(':', '-')}", tmp_path / f"go-{fault.replace(':', '-')}"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(FAULT),
        LLM4ALL_FAULT=fault,
        LLM4ALL_FAULT_READY=str(ready),
        LLM4ALL_FAULT_GO=str(go),
        **env,
    )
    log = tmp_path / f"log-{fault.replace(':', '-')}.txt"
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "llm4all_recipes", *argv], env=env, stdout=f, stderr=f)
    deadline = time.time() + 300
    while not ready.exists():
        assert proc.poll() is None, f"the run ended before {fault}: {log.read_text()[-2000:]}"
        assert time.time() < deadline, "the run never reached the fault point"
        time.sleep(0.1)
    return proc, ready, go


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def kill_9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def history(out: Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged training step, from the final checkpoint's trainer state."""
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    return [(h["step"], h["loss"]) for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "cpt"
    assert main(cpt_argv(tiny_model, out)) == 0
    return {"history": history(out), "metrics": json.loads((out / "metrics.json").read_text()), "out": out}


# kill -9 while checkpoint-N is being written, at three N and three moments, and after the last checkpoint
@pytest.mark.parametrize(
    "fault, state",
    [
        ("2:weights", "weights only"),  # checkpoint-2 has its weights, nothing else: nothing to resume from
        ("4:optimizer", "no trainer state"),  # weights + optimizer + RNG, no trainer_state.json
        ("6:state", "half a trainer state"),  # trainer_state.json truncated mid-write
        ("6:saved", "complete"),  # the last checkpoint is whole; killed before the final output was written
    ],
)
def test_kill_9_while_saving_resumes_to_the_same_run(tiny_model, tmp_path, reference, fault, state):
    out = tmp_path / "cpt"
    proc, _, _ = start_paused(cpt_argv(tiny_model, out), fault, tmp_path)
    step = int(fault.split(":")[0])
    ckpt = tmp_path / "cpt.tmp" / f"checkpoint-{step}"
    trainer_state = ckpt / "trainer_state.json"
    if state == "weights only":
        assert (ckpt / "model.safetensors").is_file() and not (ckpt / "optimizer.pt").exists()
    elif state == "no trainer state":
        assert (ckpt / "optimizer.pt").is_file() and not trainer_state.exists()
    elif state == "half a trainer state":
        with pytest.raises(json.JSONDecodeError):
            json.loads(trainer_state.read_text())
    kill_9(proc)
    assert not out.exists()

    run_only = ["--report_to", "none", "--save_total_limit", "3"] if state == "complete" else []  # may change
    assert main(cpt_argv(tiny_model, out, *run_only)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected_resume = {
        "weights only": None,
        "no trainer state": "checkpoint-2",
        "half a trainer state": "checkpoint-4",
        "complete": "checkpoint-6",
    }[state]
    assert metrics["resumed_from"] == expected_resume
    assert metrics["train"]["global_step"] == 6  # never a step past max_steps
    assert metrics["train"]["num_tokens"] == reference["metrics"]["train"]["num_tokens"]  # the counter survives
    got, want = history(out), reference["history"]
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-5)
    for label, want_eval in reference["metrics"]["eval"].items():
        assert metrics["eval"][label]["loss"] == pytest.approx(want_eval["loss"], rel=1e-5)
    assert not (tmp_path / "cpt.tmp").exists() and not (out / LOCK).exists() and not (out / MARKER).exists()
    if state != "complete":  # the broken checkpoint was moved aside, not resumed from nor deleted silently
        assert list((out / "incomplete").glob(f"checkpoint-{step}-*")) or state == "weights only"


def test_kill_9_during_the_merge_grid_reruns_to_the_same_model(tiny_model, tmp_path):
    """Killed halfway through the α grid (trained weights saved, one α measured): the rerun resumes from the last
    complete checkpoint, measures the whole grid again and writes the uninterrupted run's merged model."""
    grid = ["--merge_grid", "[0.5, 0.9]", "--merge_min_gain", "0.5"]
    assert main(cpt_argv(tiny_model, tmp_path / "ref", *grid)) == 0
    out = tmp_path / "cpt"
    proc, _, _ = start_paused(cpt_argv(tiny_model, out, *grid), "merge:2", tmp_path)
    assert (tmp_path / "cpt.tmp" / "model.safetensors").is_file()  # the trained weights, before the merge
    kill_9(proc)
    assert not out.exists()
    assert main(cpt_argv(tiny_model, out, *grid)) == 0
    metrics, ref = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "ref"))
    assert (
        metrics["resumed_from"] == "checkpoint-6"
        and metrics["merge_with_base"]["alpha"] == ref["merge_with_base"]["alpha"]
    )
    for alpha, sets in ref["merge_with_base"]["results"].items():
        for name, want_eval in sets.items():
            assert metrics["merge_with_base"]["results"][alpha][name]["loss"] == pytest.approx(
                want_eval["loss"], rel=1e-5
            )
    got, want = (load_file(str(d / "model.safetensors")) for d in (out, tmp_path / "ref"))
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


def test_a_second_run_into_the_same_folder_is_refused(tiny_model, tmp_path, reference, capsys):
    out = tmp_path / "cpt"
    proc, _, go = start_paused(cpt_argv(tiny_model, out), "4:saved", tmp_path)
    lock = json.loads((tmp_path / "cpt.tmp" / LOCK).read_text())
    assert lock["pid"] == proc.pid
    assert main(cpt_argv(tiny_model, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"another run is writing {tmp_path / 'cpt.tmp'} (pid {proc.pid} on" in err
    go.write_text("")
    assert proc.wait(timeout=300) == 0
    got, want = zip(*history(out)), zip(*reference["history"])  # the first run finished unchanged
    (got_steps, got_losses), (want_steps, want_losses) = got, want
    assert got_steps == want_steps and got_losses == pytest.approx(want_losses, rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] is None


def test_another_recipe_never_resumes_an_interrupted_run(tiny_model, tmp_path, capsys):
    out = tmp_path / "cpt"
    proc, _, _ = start_paused(cpt_argv(tiny_model, out), "4:saved", tmp_path)
    kill_9(proc)
    assert main(cpt_argv(tiny_model, out, "--learning_rate", "1e-5", "--seed", "7")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds an interrupted run of another recipe" in err and "learning_rate: 0.002 -> 1e-05" in err
    assert "seed: 0 -> 7" in err and "--overwrite_output_dir true" in err
    assert (tmp_path / "cpt.tmp" / "checkpoint-4" / "trainer_state.json").is_file()  # left as it was
    # --overwrite_output_dir discards it and starts over
    assert main(cpt_argv(tiny_model, out, "--learning_rate", "1e-5", "--overwrite_output_dir", "true")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] is None and metrics["train"]["global_step"] == 6


def test_no_secret_reaches_any_output_file(tiny_model, tmp_path, recipe_file, monkeypatch):
    """A token given on the command line, as a YAML key and in the YAML's `env:` mapping: in no file at all
    (checkpoint pickles included), in the final folder and the published copy."""
    # this test's own hub folder (a rerun publishes anew)
    monkeypatch.setenv("LLM4ALL_HUB_DIR", str(tmp_path / "hub"))
    recipe = recipe_file(
        (REPO / CPT).read_text() + "hub_token: hf_SECRET_IN_YAML_0001\nenv:\n  HF_TOKEN: hf_SECRET_IN_ENV_0002\n",
        stage="cpt",
    )
    out = tmp_path / "out"
    argv = [
        "cpt",
        "--config",
        recipe,
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(out),
        *STEPS,
        "--hub_token",
        "hf_SECRET_ON_CLI_0003",
        "--push_to_hub",
        "true",
        "--hub_model_id",
        "me/secret-test",
        "--hub_target",
        "local",
    ]
    try:
        assert main(argv) == 0
    finally:
        os.environ.pop("HF_TOKEN", None)  # the recipe's env: mapping set it for this process
    files = [p for p in [*out.rglob("*"), *Path(os.environ["LLM4ALL_HUB_DIR"], "me", "secret-test").rglob("*")]]
    assert any(p.name == "training_args.bin" for p in files)  # the Trainer's pickles were written, and checked
    for path in (p for p in files if p.is_file()):
        data = path.read_bytes()
        for secret in (b"hf_SECRET_IN_YAML_0001", b"hf_SECRET_IN_ENV_0002", b"hf_SECRET_ON_CLI_0003"):
            assert secret not in data, f"{secret!r} in {path}"


# --------------------------------------------------------------------------- folders that are not ours
@pytest.mark.parametrize("output_dir", ["", " ", ".", "./", ".."])
def test_output_dir_that_would_delete_the_working_directory_is_refused(
    tiny_model, tmp_path, output_dir, monkeypatch, capsys
):
    """Run from a scratch working directory: even a failing guard could only ever delete the scratch folder."""
    scratch = tmp_path / "scratch" / "cwd"
    scratch.mkdir(parents=True)
    (scratch / "precious.txt").write_text("keep me")
    monkeypatch.chdir(scratch)
    for extra in ([], ["--overwrite_output_dir", "true"]):
        argv = [
            "cpt",
            "--config",
            str(REPO / CPT),
            "--model_name_or_path",
            str(tiny_model),
            "--output_dir",
            output_dir,
            "--max_steps",
            "1",
            *extra,
        ]
        assert main(argv) == 2
        assert last_error(capsys).startswith("error: command line: key 'output_dir': ")
        assert (scratch / "precious.txt").read_text() == "keep me"
        assert sorted(p.name for p in scratch.parent.iterdir()) == ["cwd"]


@pytest.mark.parametrize("which", ["repo", "repo parent", "home", "git"])
def test_output_dir_on_the_checkout_is_refused(tiny_model, which, capsys):
    target = {"repo": REPO, "repo parent": REPO.parent, "home": Path.home(), "git": REPO / ".git" / "out"}[which]
    argv = cpt_argv(tiny_model, target, "--overwrite_output_dir", "true", "--dry_run", "true")
    assert main(argv) == 2  # dry run: even a broken guard writes nothing
    assert "key 'output_dir'" in capsys.readouterr().err


def test_output_dir_that_is_a_file(tiny_model, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(cpt_argv(tiny_model, tmp_path / "file")) == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_unwritable_output_parent_fails_before_any_model_loads(tiny_model, tmp_path, capsys, monkeypatch):
    import llm4all_recipes.stages.cpt as cpt

    monkeypatch.setattr(cpt, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(cpt_argv(tiny_model, "/proc/llm4all-test/out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: command line: key 'output_dir': cannot create /proc/llm4all-test/out.tmp")


def _text_recipe(tmp_path):
    return parse_recipe(
        "build-dataset",
        [
            "--config",
            "recipes/datasets/french-text.yaml",
            "--output_dir",
            str(tmp_path / "ds"),
            "--push_to_hub",
            "false",
        ],
    )


def test_a_folder_created_during_the_run_is_not_deleted(tmp_path):
    recipe = _text_recipe(tmp_path)
    appeared = pytest.raises(RecipeError, match="appeared while this run was writing")
    with appeared, staged_output(recipe, "build-dataset") as tmp:
        (tmp / "result.txt").write_text("done")
        (tmp_path / "ds").mkdir()
        (tmp_path / "ds" / "theirs.txt").write_text("someone else's")
    assert (tmp_path / "ds" / "theirs.txt").read_text() == "someone else's"
    assert (tmp_path / "ds.tmp" / "result.txt").read_text() == "done"  # the finished run is kept, not lost


def test_overwrite_never_replaces_a_folder_that_is_not_an_llm4all_output(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("mine")
    argv = [
        "build-dataset",
        "--config",
        "recipes/datasets/french-text.yaml",
        "--output_dir",
        str(tmp_path / "ds"),
        "--push_to_hub",
        "false",
        "--overwrite_output_dir",
        "true",
    ]
    assert main(argv) == 2
    assert "is not an llm4all output" in capsys.readouterr().err
    assert (tmp_path / "ds" / "mine.txt").read_text() == "mine"
    (tmp_path / "ds" / "mine.txt").unlink()
    (tmp_path / "ds").rmdir()
    assert main(argv) == 0 and main(argv) == 0  # an llm4all output is replaced when asked
    assert (tmp_path / "ds" / "lineage.json").is_file()


def test_a_foreign_tmp_folder_is_never_touched(tmp_path, capsys):
    (tmp_path / "ds.tmp").mkdir()
    (tmp_path / "ds.tmp" / "notes.txt").write_text("not a run")
    argv = [
        "build-dataset",
        "--config",
        "recipes/datasets/french-text.yaml",
        "--output_dir",
        str(tmp_path / "ds"),
        "--push_to_hub",
        "false",
    ]
    assert main(argv) == 2
    assert f"{tmp_path / 'ds.tmp'} exists and was not made by llm4all" in capsys.readouterr().err
    assert (tmp_path / "ds.tmp" / "notes.txt").read_text() == "not a run"


def test_leftovers_of_an_interrupted_stage_that_does_not_resume_are_discarded(tmp_path):
    recipe = _text_recipe(tmp_path)
    with pytest.raises(KeyboardInterrupt), staged_output(recipe, "build-dataset") as tmp:
        raise KeyboardInterrupt
    assert not tmp.exists()  # removed on error: nothing half-written
    tmp.mkdir()  # what a kill -9 leaves: our marker, a stale file
    (tmp / MARKER).write_text(json.dumps({"stage": "build-dataset", "fingerprint": "0"}))
    (tmp / "stale.arrow").write_text("old")
    assert (
        main(
            [
                "build-dataset",
                "--config",
                "recipes/datasets/french-text.yaml",
                "--output_dir",
                str(tmp_path / "ds"),
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    assert not (tmp_path / "ds" / "stale.arrow").exists() and (tmp_path / "ds" / "dataset_dict.json").is_file()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    recipe = _text_recipe(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "ds.tmp").mkdir()
    (tmp_path / "ds.tmp" / MARKER).write_text(json.dumps({"stage": "build-dataset", "fingerprint": "0"}))
    (tmp_path / "ds.tmp" / LOCK).write_text(
        json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "started": "earlier", "command": "llm4all"})
    )
    with staged_output(recipe, "build-dataset") as tmp:
        (tmp / "lineage.json").write_text("{}")
    assert f"from pid {int(dead.stdout)}" in caplog.text and "no longer running" in caplog.text
    assert (tmp_path / "ds" / "lineage.json").is_file() and not (tmp_path / "ds" / LOCK).exists()


def test_a_held_lock_is_refused_with_its_owner(tmp_path):
    import fcntl

    recipe = _text_recipe(tmp_path)
    (tmp_path / "ds.tmp").mkdir()
    with open(tmp_path / "ds.tmp" / LOCK, "w") as held:
        held.write(json.dumps({"pid": 4242, "host": "node7", "started": "12:00", "command": "llm4all build-dataset"}))
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        with (
            pytest.raises(RecipeError, match="pid 4242 on node7, since 12:00"),
            staged_output(recipe, "build-dataset"),
        ):
            pass
    assert sorted(p.name for p in (tmp_path / "ds.tmp").iterdir()) == [LOCK]


# --------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.fixture
def model_copy(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle only"])
def test_broken_weights_fail_before_loading(model_copy, tmp_path, capsys, damage):
    weights = model_copy / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00garbage" * 100)
    else:
        import torch
        from safetensors.torch import load_file

        torch.save(load_file(str(weights)), model_copy / "pytorch_model.bin")
        weights.unlink()
    assert main(cpt_argv(model_copy, tmp_path / "out")) == 2
    err = last_error(capsys)
    assert err.startswith("error: command line: key 'model_name_or_path': ")
    assert {
        "truncated": "model.safetensors is truncated",
        "garbage": "model.safetensors is not a safetensors file",
        "pickle only": "holds only pickle weights (pytorch_model.bin)",
    }[damage] in err


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            '{"text": "un"}\n{"text": "deux"}\n{"text": 3}\n',
            "column 'text' of {path} holds Json(decode=True), not strings",
        ),
        ('{"text": "un"}\n{"text": "deux"}\n{"text": "trois\n', "{path}:3: invalid JSON (Unterminated string"),
    ],
)
def test_bad_rows_name_the_recipe_the_file_and_the_cause(tiny_model, tmp_path, recipe_file, capsys, content, expected):
    data = tmp_path / "new.jsonl"
    data.write_text(content * 3 if "int" in expected else content)
    recipe = recipe_file(
        (REPO / CPT).read_text().replace("tests/fixtures/text/new_train.jsonl", str(data)), stage="cpt"
    )
    argv = [
        "cpt",
        "--config",
        recipe,
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert main([*argv, *STEPS]) == 2
    err = last_error(capsys)
    assert err.startswith(f"error: {recipe}:6: key 'datasets[0].path': ")  # the recipe file and the entry's line
    assert expected.format(path=data) in err


def test_top_k_above_the_vocabulary_fails_before_the_teacher_loads(tiny_model, tmp_path, capsys, monkeypatch):
    import llm4all_recipes.stages.cache_teacher as cache_teacher

    monkeypatch.setattr(cache_teacher, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = [
        "cache-teacher",
        "--config",
        "recipes/tiny-llama/cache-teacher/base.yaml",
        "--teacher_model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(tmp_path / "cache"),
        "--top_k",
        "100000",
    ]
    assert main(argv) == 2
    assert "key 'top_k': 100000 is more than the vocabulary (2048 tokens" in last_error(capsys)


def test_a_run_that_would_train_nothing_is_refused(tiny_model, tmp_path, capsys):
    assert main(cpt_argv(tiny_model, tmp_path / "out", "--max_steps", "-1", "--num_train_epochs", "0")) == 2
    assert "key 'num_train_epochs': nothing to train: max_steps is -1 and num_train_epochs 0.0" in last_error(capsys)
