"""Fused projections (Phi-3's `qkv_proj`, `gate_up_proj`): factored as one matrix, or split per projection?

    python benchmarks/fused.py --model outputs/bench/french-bench --data benchmarks/data/manpages-fr \
        [--ratios 0.4 0.6] [--heal] [--write-docs]

The same trained weights in two layouts: the Llama checkpoint as it is (q/k/v and gate/up are separate
matrices: compressing them is the "split" choice, each with its own rank) and converted to Phi-3's layout
(q/k/v stacked into `qkv_proj`, gate/up into `gate_up_proj`: one factorisation each, one shared `down`
factor). The conversion is checked to give the same logits. Both are compressed by the shipped recipe
(recipes/tiny-llama/compress/whitening-60.yaml, uniform ranks, the ratio overridden) at the same fraction of
the targeted parameters; with --heal, feature distillation (recipes/tiny-llama/feature-distill/whitening-60.yaml)
follows. Held-out perplexity on `<data>/old_eval.jsonl`. Outputs under outputs/bench/fused-<model name>/.
"""

import argparse
import json
from pathlib import Path

import torch
from report import add_docs_flag, command_line, machine, write_section

from llm4all_recipes.cli import run_stage

COMPRESS = "recipes/tiny-llama/compress/whitening-60.yaml"
FD = "recipes/tiny-llama/feature-distill/whitening-60.yaml"


def to_phi3(src: Path, dst: Path) -> None:
    """The Llama checkpoint at `src` in Phi-3's fused layout at `dst` (same function, checked on logits)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config

    llama = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    c = llama.config
    config = Phi3Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        original_max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=c.rope_parameters,
        tie_word_embeddings=c.tie_word_embeddings,
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
        attention_dropout=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    phi = AutoModelForCausalLM.from_config(config)
    state = llama.state_dict()
    fused = {}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        fused[p + "self_attn.qkv_proj.weight"] = torch.cat([state.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        fused[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [state.pop(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")]
        )
    missing, unexpected = phi.load_state_dict({**state, **fused}, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    phi.tie_weights()
    ids = torch.randint(0, c.vocab_size, (2, 64))
    with torch.no_grad():
        diff = (llama(ids).logits - phi.eval()(ids).logits).abs().max().item()
    assert diff < 1e-4, f"the Phi-3 layout changes the logits by {diff}"
    phi.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)


def stage(name: str, argv: list[str], out: Path) -> dict:
    if not (out / "metrics.json").is_file():
        run_stage(name, [*argv, "--output_dir", str(out), "--push_to_hub", "false"])
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained Llama checkpoint (benchmarks/README.md)")
    parser.add_argument("--data", required=True, help="folder with old_train.jsonl and old_eval.jsonl")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.6])
    parser.add_argument("--heal", action="store_true", help="feature-distill both students too")
    add_docs_flag(parser)
    args = parser.parse_args()
    model, data = Path(args.model), Path(args.data)
    root = Path("outputs/bench") / f"fused-{model.name}"
    phi = root / "phi3-layout"
    if not (phi / "config.json").is_file():
        to_phi3(model, phi)
    data_args = [
        "--datasets",
        json.dumps([{"path": str(data / "old_train.jsonl")}]),
        "--eval_datasets",
        json.dumps([{"path": str(data / "old_eval.jsonl")}]),
    ]
    rows = []
    for ratio in args.ratios:
        for layout, base in (("split (Llama layout)", model), ("fused (Phi-3 layout)", phi)):
            tag = f"{'split' if base == model else 'fused'}-{ratio:g}"
            c = stage(
                "compress",
                ["--config", COMPRESS, "--model_name_or_path", str(base), "--ratio", str(ratio), *data_args],
                root / tag,
            )
            row = {
                "ratio": ratio,
                "layout": layout,
                "dense": c["eval_before"]["old_eval"]["perplexity"],
                "compressed": c["eval"]["old_eval"]["perplexity"],
                "parameters": c["compression"]["model_params_after"],
                "achieved": c["compression"]["achieved_ratio"],
            }
            if args.heal:
                f = stage(
                    "feature-distill",
                    ["--config", FD, "--model_name_or_path", str(root / tag), *data_args],
                    root / f"{tag}-fd",
                )
                row["healed"] = f["eval"]["old_eval"]["perplexity"]
            rows.append(row)
            print(json.dumps(row))
    (Path(__file__).parent / "results").mkdir(exist_ok=True)
    (Path(__file__).parent / "results" / f"fused-{model.name}.json").write_text(json.dumps(rows, indent=1))
    if args.write_docs:
        write_section(f"fused-{model.name}", report(rows, model.name))


def report(rows: list[dict], name: str) -> str:
    heal = "healed" in rows[0]
    lines = [
        f"## Fused projections: one factorisation or one per projection ({name})",
        "",
        f"`{command_line()}` — {machine()}",
        "",
        "The same trained weights in the Llama layout (q/k/v, gate/up separate: *split*) and in Phi-3's fused layout "
        "(`qkv_proj`, `gate_up_proj`: *fused*), compressed at the same ratio of the targeted parameters "
        "(whitening, uniform ranks). Held-out perplexity (`old_eval`).",
        "",
        "| ratio | layout | parameters | dense | compressed |" + (" + feature-distill |" if heal else ""),
        "|---|---|---|---|---|" + ("---|" if heal else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['achieved']:.3f} | {r['layout']} | {r['parameters']:,} | {r['dense']:.2f} | {r['compressed']:.2f} |"
            + (f" {r['healed']:.2f} |" if heal else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
