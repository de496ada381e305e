"""Train a small Whisper FROM SCRATCH on the synthetic French speech corpus (espeak-ng), on CPU, within a time
budget, so that the compression benchmarks can compare word error rates of a dense and a compressed model.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/whisper_french.py --max-minutes 70 \\
        --out outputs/bench/whisper-fr

(run from the repository root). Steps:

1. Features: every clip of `benchmarks/data/french-speech/{train,eval}.jsonl` is decoded once
   (`llm4all_recipes.speech.audio.decode`, mono 16 kHz) and turned into Whisper log-mel features by the
   model's own feature extractor, cached as float16 .npy under `--cache` (git-ignored `outputs/`). Training
   clips longer than the window (`--chunk-seconds`) are dropped and counted.
2. Model: `llm4all_recipes.tiny.build_whisper_tokenizer` (byte-level BPE trained on the train manifest only,
   `--vocab` entries, plus Whisper's special tokens) and `llm4all_recipes.tiny.build_whisper`. The window is
   short: `--chunk-seconds` 10 s instead of 30 s, and `--hop-length` 320 samples (20 ms) instead of 160, i.e.
   500 mel frames and `max_source_positions` 250: a quarter of the frames of a stock Whisper, which halves the
   encoder's cost on one CPU thread. The saved processor carries this feature extractor, so `AutoProcessor`
   feeds the model features of the right shape.
3. Training: labels `<|fr|><|transcribe|><|notimestamps|> text <|endoftext|>` (the tokenizer's prefix,
   `<|startoftranscript|>` left out as Whisper's fine-tuning collators do: the model shifts the labels right
   and starts the decoder with it), -100 on padding. AdamW, linear warm-up then cosine decay driven by the
   fraction of the time budget spent (or of `--steps`, whichever is further), grad clip 1.0. An auxiliary
   CTC loss (`--ctc-weight`) on the encoder output, through a linear head that is not saved, speeds up
   learning the alignment from scratch; the saved model is a plain WhisperForConditionalGeneration.
   The budget counts training steps only (not feature caching, evaluations and checkpoints).
4. Evaluation: greedy `generate(language="fr", task="transcribe")` on the eval utterances (`--mid-eval` of
   them every `--eval-every-minutes`, all at the end), WER/CER by `llm4all_recipes.speech.wer.error_rates`.
   The model and processor are saved (safetensors) to `--out` every `--save-every-minutes` and at the end,
   with `metrics.json`; the saved folder is reloaded with AutoModelForSpeechSeq2Seq / AutoProcessor and checked.
"""

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llm4all_recipes.speech.audio import SAMPLING_RATE, decode
from llm4all_recipes.speech.wer import error_rates
from llm4all_recipes.tiny import build_whisper, build_whisper_tokenizer

DATA = Path("benchmarks/data/french-speech")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder of train.jsonl / eval.jsonl")
    p.add_argument("--cache", type=Path, default=Path("outputs/bench/whisper-fr-data"), help="feature cache")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/whisper-fr"), help="saved model folder")
    p.add_argument("--vocab", type=int, default=512, help="BPE vocabulary (before Whisper's special tokens)")
    p.add_argument("--mel-bins", type=int, default=80)
    p.add_argument("--chunk-seconds", type=int, default=10, help="input window (Whisper: 30)")
    p.add_argument("--hop-length", type=int, default=320, help="mel hop in samples (Whisper: 160)")
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--encoder-layers", type=int, default=4)
    p.add_argument("--decoder-layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn-mult", type=int, default=4)
    p.add_argument("--max-target-positions", type=int, default=192)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--ctc-weight", type=float, default=0.3, help="auxiliary CTC loss weight (0: none)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr / peak lr")
    p.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=100_000, help="step limit (the time budget usually ends first)")
    p.add_argument("--max-minutes", type=float, default=70.0, help="training wall-time budget")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every-minutes", type=float, default=20.0, help="mid-run eval period (0: none)")
    p.add_argument("--mid-eval", type=int, default=100, help="eval utterances in mid-run evaluations")
    p.add_argument("--eval-limit", type=int, default=0, help="eval utterances at the end (0: all)")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--save-every-minutes", type=float, default=10.0)
    p.add_argument(
        "--snapshot-steps",
        type=int,
        nargs="*",
        default=[],
        help="also save the model as it is after each of these step counts to <out>-step<N> (the encoder of a "
        "speech-text model given the rest of the budget: benchmarks/speech_llm.py)",
    )
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- features
def make_extractor(args):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=args.mel_bins, chunk_length=args.chunk_seconds, hop_length=args.hop_length
    )


def load_split(args, split: str, extractor) -> dict:
    """{"rows", "features" (float16 [n, mel, frames]), "samples" (clip lengths), "dropped"}, cached."""
    with open(args.data / f"{split}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tag = f"{split}-mel{args.mel_bins}-hop{args.hop_length}-win{args.chunk_seconds}"
    feat_path, meta_path = args.cache / f"{tag}.npy", args.cache / f"{tag}.json"
    if feat_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["rows"] == len(rows):
            by_id = {r["id"]: r for r in rows}
            kept = [by_id[i] for i in meta["ids"]]
            features = np.load(feat_path, mmap_mode="r")
            return {
                "rows": kept,
                "features": features,
                "samples": meta["samples"],
                "dropped": meta["dropped"],
            }
    t0 = time.time()
    kept, samples, feats, dropped, pending = [], [], [], [], []

    def flush():
        if pending:
            out = extractor(pending, sampling_rate=SAMPLING_RATE, return_tensors="np").input_features
            feats.append(out.astype(np.float16))
            pending.clear()

    for i, row in enumerate(rows):
        audio = decode(args.data / row["audio"])
        if len(audio) > extractor.n_samples:
            dropped.append({"id": row["id"], "seconds": round(len(audio) / SAMPLING_RATE, 2)})
            if split == "train":
                continue
        kept.append(row)
        samples.append(min(len(audio), extractor.n_samples))
        pending.append(audio)
        if len(pending) == 64:
            flush()
        if (i + 1) % 500 == 0:
            print(f"[features] {split}: {i + 1}/{len(rows)} clips, {time.time() - t0:.0f} s", flush=True)
    flush()
    features = np.concatenate(feats)
    args.cache.mkdir(parents=True, exist_ok=True)
    np.save(feat_path, features)
    meta = {"rows": len(rows), "ids": [r["id"] for r in kept], "samples": samples, "dropped": dropped}
    meta_path.write_text(json.dumps(meta))
    print(
        f"[features] {split}: {len(kept)} clips {features.shape} in {time.time() - t0:.0f} s, "
        f"over {args.chunk_seconds} s: {len(dropped)} ({'dropped' if split == 'train' else 'truncated'})",
        flush=True,
    )
    return {"rows": kept, "features": features, "samples": samples, "dropped": dropped}


# --------------------------------------------------------------------------- model
def model_config(args) -> dict:
    frames = args.chunk_seconds * SAMPLING_RATE // args.hop_length
    return {
        "num_mel_bins": args.mel_bins,
        "d_model": args.d_model,
        "encoder_layers": args.encoder_layers,
        "decoder_layers": args.decoder_layers,
        "encoder_attention_heads": args.heads,
        "decoder_attention_heads": args.heads,
        "encoder_ffn_dim": args.ffn_mult * args.d_model,
        "decoder_ffn_dim": args.ffn_mult * args.d_model,
        "max_source_positions": frames // 2,
        "max_target_positions": args.max_target_positions,
        "dropout": args.dropout,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    }


def encoder_lengths(samples, hop_length: int, positions: int) -> torch.Tensor:
    """Encoder positions covering each clip (the rest is padding): frames / 2 (conv2's stride), rounded up."""
    return torch.tensor([min(positions, (n // hop_length + 2) // 2 + 1) for n in samples])


@torch.no_grad()
def transcribe(model, processor, features, limit: int, batch: int, max_new_tokens: int) -> list[str]:
    model.eval()
    hyps = []
    for start in range(0, limit, batch):
        x = torch.from_numpy(np.asarray(features[start : min(limit, start + batch)], dtype=np.float32))
        ids = model.generate(
            input_features=x, language="fr", task="transcribe", max_new_tokens=max_new_tokens, num_beams=1
        )
        hyps += processor.batch_decode(ids, skip_special_tokens=True)
    model.train()
    return [h.strip() for h in hyps]


def evaluate(model, processor, split, limit, args) -> dict:
    t0 = time.time()
    limit = min(limit or len(split["rows"]), len(split["rows"]))
    refs = [r["text"] for r in split["rows"][:limit]]
    hyps = transcribe(model, processor, split["features"], limit, args.eval_batch, args.max_target_positions - 8)
    rates = error_rates(refs, hyps)
    rates["seconds"] = round(time.time() - t0, 1)
    rates["examples"] = [{"reference": r, "hypothesis": h} for r, h in list(zip(refs, hyps))[:8]]
    return rates


def save(model, processor, args, metrics: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")


def check_reload(args, split) -> dict:
    """Reload the saved folder with the Auto classes and transcribe two eval clips from raw audio."""
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    model = AutoModelForSpeechSeq2Seq.from_pretrained(args.out).eval()
    processor = AutoProcessor.from_pretrained(args.out)
    rows = split["rows"][:2]
    audio = [decode(args.data / r["audio"]) for r in rows]
    x = processor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(input_features=x, language="fr", task="transcribe", max_new_tokens=128)
    hyps = processor.batch_decode(ids, skip_special_tokens=True)
    return {
        "class": type(model).__name__,
        "input_features": list(x.shape),
        "examples": [{"reference": r["text"], "hypothesis": h.strip()} for r, h in zip(rows, hyps)],
    }


# --------------------------------------------------------------------------- training
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    command = "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python " + shlex.join(sys.argv)
    t_start = time.time()

    extractor = make_extractor(args)
    train, evals = load_split(args, "train", extractor), load_split(args, "eval", extractor)
    train_features = torch.from_numpy(np.ascontiguousarray(train["features"]))  # float16, in memory
    prep_seconds = time.time() - t_start

    from transformers import WhisperProcessor

    tokenizer = build_whisper_tokenizer([str(args.data / "train.jsonl")], args.vocab)
    tokenizer.set_prefix_tokens(language="fr", task="transcribe", predict_timestamps=False)
    config = model_config(args)
    model, processor = build_whisper(config, tokenizer, seed=args.seed)
    processor = WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    labels_all = []
    for row in train["rows"]:
        ids = tokenizer(row["text"]).input_ids  # <|sot|><|fr|><|transcribe|><|notimestamps|> ... <|eot|>
        assert ids[0] == sot and ids[-1] == eot, ids[:5]
        labels_all.append(ids[1:])
    longest = max(len(ids) for ids in labels_all)
    assert longest < args.max_target_positions, (longest, args.max_target_positions)
    # CTC targets: the text tokens only (BPE ids < vocab); blank = <|endoftext|> (id 0), never a text token
    ctc_targets = [[t for t in ids if t < tokenizer.vocab_size and t != eot] for ids in labels_all]
    positions = config["max_source_positions"]
    enc_lengths = encoder_lengths(train["samples"], args.hop_length, positions)

    ctc_head = torch.nn.Linear(args.d_model, tokenizer.vocab_size) if args.ctc_weight > 0 else None
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"[model] {n_params / 1e6:.2f} M parameters, vocabulary {len(tokenizer)} ({args.vocab} BPE), config {config}",
        flush=True,
    )
    print(
        f"[data] train {len(train['rows'])} clips (dropped over {args.chunk_seconds} s: {len(train['dropped'])}), "
        f"eval {len(evals['rows'])}, label tokens max {longest}, features {tuple(train_features.shape)}, "
        f"prep {prep_seconds:.0f} s",
        flush=True,
    )

    params = list(model.parameters()) + (list(ctc_head.parameters()) if ctc_head else [])
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-8,
    )
    budget = args.max_minutes * 60

    def lr_at(step: int, progress: float) -> float:
        warm = min(1.0, (step + 1) / args.warmup)
        floor = args.min_lr_ratio
        return args.lr * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    metrics = {
        "command": command,
        "model_config": config,
        "parameters": n_params,
        "vocabulary": {"bpe": args.vocab, "total": len(tokenizer)},
        "feature_extractor": {
            "feature_size": args.mel_bins,
            "chunk_length": args.chunk_seconds,
            "hop_length": args.hop_length,
            "n_samples": extractor.n_samples,
            "nb_max_frames": extractor.nb_max_frames,
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_clips": len(train["rows"]),
        "train_dropped_over_window": train["dropped"],
        "eval_clips": len(evals["rows"]),
        "generation": 'model.generate(input_features, language="fr", task="transcribe") (greedy)',
        "mid_evals": [],
        "loss_log": [],
    }

    model.train()
    step, samples_seen, tokens_seen, train_seconds, train_cpu = 0, 0, 0, 0.0, 0.0
    order: list[int] = []
    progress: dict = {}
    next_eval = args.eval_every_minutes * 60 if args.eval_every_minutes > 0 else float("inf")
    next_save = args.save_every_minutes * 60
    acc = {"loss": 0.0, "att": 0.0, "ctc": 0.0, "n": 0}
    t_log = time.time()
    while step < args.steps and train_seconds < budget:
        t0, cpu0 = time.perf_counter(), time.process_time()
        if len(order) < args.batch:
            order += random.sample(range(len(labels_all)), len(labels_all))
        idx, order = order[: args.batch], order[args.batch :]
        x = train_features[idx].float()
        width = max(len(labels_all[i]) for i in idx)
        labels = torch.full((len(idx), width), -100, dtype=torch.long)
        for row, i in enumerate(idx):
            labels[row, : len(labels_all[i])] = torch.tensor(labels_all[i])
        lr = lr_at(step, max(step / args.steps, train_seconds / budget))
        for group in optimizer.param_groups:
            group["lr"] = lr

        out = model(input_features=x, labels=labels)
        loss, att_loss, ctc_loss = out.loss, out.loss.item(), 0.0
        if ctc_head is not None:
            log_probs = F.log_softmax(ctc_head(out.encoder_last_hidden_state), dim=-1).transpose(0, 1)
            targets = [torch.tensor(ctc_targets[i]) for i in idx]
            ctc = F.ctc_loss(
                log_probs,
                torch.cat(targets),
                enc_lengths[idx],
                torch.tensor([len(t) for t in targets]),
                blank=eot,
                zero_infinity=True,
            )
            loss = loss + args.ctc_weight * ctc
            ctc_loss = ctc.item()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        step += 1
        samples_seen += len(idx)
        tokens_seen += int((labels != -100).sum())
        train_seconds += time.perf_counter() - t0
        train_cpu += time.process_time() - cpu0  # CPU seconds of the training steps (all threads)
        acc["loss"] += loss.item()
        acc["att"] += att_loss
        acc["ctc"] += ctc_loss
        acc["n"] += 1
        if step % args.log_every == 0 or step == 1:
            n = acc["n"]
            entry = {
                "step": step,
                "epoch": round(samples_seen / len(labels_all), 3),
                "loss": round(acc["loss"] / n, 4),
                "att_loss": round(acc["att"] / n, 4),
                "ctc_loss": round(acc["ctc"] / n, 4),
                "lr": lr,
                "grad_norm": round(grad_norm, 3),
                "train_minutes": round(train_seconds / 60, 2),
            }
            metrics["loss_log"].append(entry)
            print(
                f"step {step:5d} ep {entry['epoch']:.2f} loss {entry['loss']:.4f} (att {entry['att_loss']:.4f} "
                f"ctc {entry['ctc_loss']:.4f}) lr {lr:.2e} gn {grad_norm:.2f} "
                f"{(time.time() - t_log) / n:.2f} s/step train {train_seconds / 60:.1f} min",
                flush=True,
            )
            acc = {"loss": 0.0, "att": 0.0, "ctc": 0.0, "n": 0}
            t_log = time.time()
        progress = {
            "steps": step,
            "epochs": round(samples_seen / len(labels_all), 3),
            "samples": samples_seen,
            "label_tokens": tokens_seen,
            "train_minutes": round(train_seconds / 60, 2),
            "train_cpu_seconds": round(train_cpu, 1),
        }
        if step in args.snapshot_steps:
            snapshot = argparse.Namespace(**{**vars(args), "out": args.out.with_name(f"{args.out.name}-step{step}")})
            save(model, processor, snapshot, {**metrics, **progress, "status": f"snapshot after {step} steps"})
            print(f"[snapshot] {snapshot.out} after {step} steps, {train_cpu:.0f} CPU s", flush=True)
            t_log = time.time()
        if train_seconds >= next_eval and train_seconds < budget - 60:
            rates = evaluate(model, processor, evals, args.mid_eval, args)
            metrics["mid_evals"].append({**progress, **rates})
            print(
                f"[eval {args.mid_eval}] step {step}: WER {rates.get('wer')} CER {rates.get('cer')} "
                f"({rates['seconds']} s)",
                flush=True,
            )
            for ex in rates["examples"][:3]:
                print(f"    REF: {ex['reference']}\n    HYP: {ex['hypothesis']}", flush=True)
            next_eval += args.eval_every_minutes * 60
            t_log = time.time()
        if train_seconds >= next_save:
            save(model, processor, args, {**metrics, **progress, "status": "partial"})
            next_save += args.save_every_minutes * 60
            t_log = time.time()

    metrics.update(progress)
    metrics["train_seconds"] = round(train_seconds, 1)
    print(f"[train] done: {step} steps, {progress['epochs']} epochs, {train_seconds / 60:.1f} min", flush=True)
    rates = evaluate(model, processor, evals, args.eval_limit, args)
    metrics["eval"] = rates
    metrics["status"] = "final"
    print(
        f"[eval {rates['segments']}] WER {rates.get('wer')} CER {rates.get('cer')} ({rates['seconds']} s)",
        flush=True,
    )
    for ex in rates["examples"]:
        print(f"    REF: {ex['reference']}\n    HYP: {ex['hypothesis']}", flush=True)
    save(model, processor, args, metrics)
    metrics["reload_check"] = check_reload(args, evals)
    metrics["total_wall_minutes"] = round((time.time() - t_start) / 60, 2)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print(f"[saved] {args.out} reload check: {metrics['reload_check']}", flush=True)


if __name__ == "__main__":
    main()
