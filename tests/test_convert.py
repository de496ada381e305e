"""`llm4all convert`: a checkpoint with pickle weights only (CroissantLLMBase's main branch) becomes safetensors,
read with torch.load(weights_only=True); every other stage keeps refusing pickle, and a pickle holding code is
refused without running it."""

import os
import shutil

import torch
from safetensors.torch import load_file

from llm4all_recipes.cli import main


def pickle_only(tiny_model, folder):
    """The tiny model as a pickle-only checkpoint (pytorch_model.bin, no safetensors), as on the Hub's main branch."""
    shutil.copytree(tiny_model, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder, state


def test_convert_writes_the_same_tensors_as_safetensors(tiny_model, tmp_path, capsys):
    source, state = pickle_only(tiny_model, tmp_path / "croissant-like")
    out = tmp_path / "converted"
    # any stage refuses the pickle, naming the one that reads it
    assert (
        main(
            [
                "compress",
                "--config",
                "recipes/tiny-llama/compress/whitening-60.yaml",
                "--model_name_or_path",
                str(source),
                "--output_dir",
                str(tmp_path / "c"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "holds only pickle weights (pytorch_model.bin)" in err and "llm4all convert" in err
    assert main(["convert", "--model_name_or_path", str(source), "--output_dir", str(out)]) == 0
    assert not list(out.glob("*.bin")) and (out / "tokenizer.json").is_file() and (out / "README.md").is_file()
    converted = load_file(out / "model.safetensors")
    assert converted.keys() <= state.keys()  # tied lm_head stored once
    assert all(torch.equal(converted[k], state[k]) for k in converted)
    # and the converted folder is what the other stages load
    assert (
        main(
            [
                "compress",
                "--config",
                "recipes/tiny-llama/compress/whitening-60.yaml",
                "--model_name_or_path",
                str(out),
                "--output_dir",
                str(tmp_path / "c"),
                "--dry_run",
                "true",
            ]
        )
        == 0
    )


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tiny_model, tmp_path, capsys):
    source, state = pickle_only(tiny_model, tmp_path / "evil")
    marker = tmp_path / "code-ran"
    RunsCode.marker = marker
    torch.save({**state, "model.norm.weight": RunsCode()}, source / "pytorch_model.bin")
    out = tmp_path / "converted"
    assert main(["convert", "--model_name_or_path", str(source), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "its pickle weights hold more than tensors (loading them would run code); refused" in err, err
    assert not marker.exists() and not out.exists() and not (tmp_path / "converted.tmp").exists()


def test_convert_is_a_listed_stage(capsys):
    assert main(["--help"]) == 0 and "convert          a checkpoint with pickle weights" in capsys.readouterr().out
