"""`llm4all merge` (WiSE-FT with the base, soups, SLERP, task arithmetic) and `merge_with_base` of the training
stages: weight 0 gives the first model and weight 1 the second exactly, weights in between the weighted average;
low-rank checkpoints merge when their ranks match; two architectures,
or two rank maps, fail in one line before anything is written."""

import pytest
import torch
from safetensors.torch import load_file

from llm4all_recipes.cli import main
from llm4all_recipes.merging import slerp
from llm4all_recipes.models import load_model


def weights_of(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """The tiny model moved away from itself (a stand-in for a fine-tuned copy of the same architecture)."""
    out = tmp_path_factory.mktemp("trained") / "model"
    model = load_model(str(tiny_model))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(out)
    return out


def merge(models, out, weights):
    return main(
        [
            "merge",
            "--config",
            "recipes/tiny-llama/merge/wise-ft.yaml",
            "--models",
            str([str(m) for m in models]).replace("'", '"'),
            "--weights",
            str(weights),
            "--output_dir",
            str(out),
        ]
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_wise_ft_interpolates_exactly(tiny_model, trained, tmp_path, alpha):
    assert merge([tiny_model, trained], tmp_path / "m", [1 - alpha, alpha]) == 0
    merged, base, other = weights_of(tmp_path / "m"), weights_of(tiny_model), weights_of(trained)
    assert merged.keys() == base.keys()
    for key in base:
        if alpha == 0.0:
            assert torch.equal(merged[key], base[key]), key
        elif alpha == 1.0:
            assert torch.equal(merged[key], other[key]), key
        else:
            assert torch.allclose(merged[key], 0.7 * base[key] + 0.3 * other[key], atol=1e-6), key
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    assert f"{alpha:g} ×" in (tmp_path / "m" / "README.md").read_text()  # the card names the weights


def test_low_rank_checkpoints_with_the_same_ranks_merge(compressed_model, distilled_model, tmp_path):
    assert merge([compressed_model, distilled_model], tmp_path / "m", [0.5, 0.5]) == 0
    merged = load_model(str(tmp_path / "m"))
    a, b = load_model(str(compressed_model)), load_model(str(distilled_model))
    name = "model.layers.0.self_attn.q_proj.down.weight"
    expected = 0.5 * a.get_parameter(name) + 0.5 * b.get_parameter(name)
    assert torch.allclose(merged.get_parameter(name), expected, atol=1e-6)


@pytest.mark.parametrize(
    "pair, message",
    [
        ("dense+low-rank", "only checkpoints of one architecture merge"),
        ("two rank maps", "low-rank checkpoints merge only with equal ranks"),
    ],
)
def test_different_architectures_fail_in_one_line(
    tiny_model, compressed_model, svd80_compressed, tmp_path, capsys, pair, message
):
    models = [tiny_model, compressed_model] if pair == "dense+low-rank" else [compressed_model, svd80_compressed]
    assert merge(models, tmp_path / "m", [0.5, 0.5]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "key 'models'" in err, err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.tmp").exists()


def test_slerp_is_exact_at_the_ends_and_stays_on_the_sphere():
    torch.manual_seed(0)
    a, b = torch.randn(64, 8), torch.randn(64, 8)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    ua, ub = a / a.norm(), b / b.norm()
    for t in (0.25, 0.5, 0.75):  # unit vectors stay unit, and the angle is split in proportion t
        mid = slerp(ua, ub, t)
        omega = torch.arccos((ua.flatten() @ ub.flatten()).clamp(-1, 1))
        assert float(mid.norm()) == pytest.approx(1.0, abs=1e-5)
        assert float(torch.arccos((ua.flatten() @ mid.flatten()).clamp(-1, 1))) == pytest.approx(
            t * float(omega), abs=1e-4
        )
    assert torch.allclose(slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel tensors: the straight path


def test_slerp_and_task_arithmetic_stages(tiny_model, trained, tmp_path):
    base, other = weights_of(tiny_model), weights_of(trained)
    argv = [
        "merge",
        "--config",
        "recipes/tiny-llama/merge/wise-ft.yaml",
        "--models",
        f'["{tiny_model}", "{trained}"]',
    ]
    assert main([*argv, "--method", "slerp", "--weights", "[0.6, 0.4]", "--output_dir", str(tmp_path / "s")]) == 0
    assert (
        main(
            [
                *argv,
                "--method",
                "task_arithmetic",
                "--weights",
                "[0, 0.5]",
                "--output_dir",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    spherical, task = weights_of(tmp_path / "s"), weights_of(tmp_path / "t")
    for key in base:
        assert torch.allclose(spherical[key], slerp(base[key].float(), other[key].float(), 0.4), atol=1e-6), key
        assert torch.allclose(task[key], base[key] + 0.5 * (other[key] - base[key]), atol=1e-6), key
    assert "slerp(" in (tmp_path / "s" / "README.md").read_text()


def test_slerp_of_three_models_fails_in_one_line(tiny_model, trained, tmp_path, capsys):
    models = f'["{tiny_model}", "{trained}", "{tiny_model}"]'
    assert (
        main(
            [
                "merge",
                "--config",
                "recipes/tiny-llama/merge/wise-ft.yaml",
                "--models",
                models,
                "--method",
                "slerp",
                "--weights",
                "[0.2, 0.4, 0.4]",
                "--output_dir",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "slerp merges exactly two models" in err, err
    assert not (tmp_path / "m").exists()


def test_any_training_stage_merges_with_its_starting_model(tiny_model, tmp_path):
    """sft with merge_with_base: 0 writes the starting weights exactly; 0.5 the midpoint of start and trained."""
    argv = [
        "sft",
        "--config",
        "recipes/tiny-llama/sft/chat.yaml",
        "--model_name_or_path",
        str(tiny_model),
        "--max_steps",
        "2",
        "--push_to_hub",
        "false",
        "--keep_best",
        "false",
    ]
    assert main([*argv, "--output_dir", str(tmp_path / "a0"), "--merge_with_base", "0"]) == 0
    assert main([*argv, "--output_dir", str(tmp_path / "a1")]) == 0
    assert main([*argv, "--output_dir", str(tmp_path / "a5"), "--merge_with_base", "0.5"]) == 0
    start, a0, a1, a5 = (weights_of(p) for p in (tiny_model, tmp_path / "a0", tmp_path / "a1", tmp_path / "a5"))
    assert all(torch.equal(a0[k], start[k]) for k in start)
    assert any(not torch.equal(a1[k], start[k]) for k in start)
    for key in start:  # same seed, same data order: the trained weights of a1 are the ones a5 merged
        assert torch.allclose(a5[key], torch.lerp(start[key], a1[key], 0.5), atol=1e-6), key
    assert "α = 0.5" in (tmp_path / "a5" / "README.md").read_text()
