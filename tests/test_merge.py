"""`llm4all merge` (WiSE-FT with the base, soups): weight 0 gives the first model and weight 1 the second exactly,
weights in between the weighted average; low-rank checkpoints merge when their ranks match; two architectures,
or two rank maps, fail in one line before anything is written."""

import pytest
import torch
from safetensors.torch import load_file

from llm4all_recipes.cli import main
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
    return main(["merge", "--config", "recipes/tiny-llama/merge/wise-ft.yaml", "--models", str([str(m) for m in models]).replace("'", '"'),
                 "--weights", str(weights), "--output_dir", str(out)])  # fmt: skip


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
def test_different_architectures_fail_in_one_line(tiny_model, compressed_model, svd80_compressed, tmp_path, capsys,
                                                  pair, message):  # fmt: skip
    models = (
        [tiny_model, compressed_model] if pair == "dense+low-rank" else [compressed_model, svd80_compressed]
    )
    assert merge(models, tmp_path / "m", [0.5, 0.5]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "key 'models'" in err, err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.tmp").exists()
