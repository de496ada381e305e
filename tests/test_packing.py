"""Packed training text opens and ends each document as the model saw documents in pretraining: the tokenizer's
own BOS when it adds one, and the end-of-text token — not an instruct tokenizer's end of turn (`<|eot_id|>`,
`<|im_end|>`), which TRL's packing appended (and then made the model's EOS)."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from llm4all_recipes.configs import read_chat_template
from llm4all_recipes.data.packing import pack_text
from llm4all_recipes.models import document_boundaries

WORDS = ["bonjour", "le", "médecin", "régulateur", "décroche", "appel"]


def family(specials: list[str], bos: str | None, eos: str, template: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a family's special tokens; `bos`: added to every encoding, as Llama's does."""
    vocab = {t: i for i, t in enumerate([*specials, *WORDS, "[UNK]"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        additional_special_tokens=[s for s in specials if s not in (bos, eos)],
    )
    out.chat_template = read_chat_template(template) if template else None
    return out


LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CASES = {  # tokenizer -> (opening tokens, closing token)
    "llama-3 instruct": (
        family(LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "llama3"),
        (["<|begin_of_text|>"], "<|end_of_text|>"),
    ),
    "llama-3 base": (
        family(LLAMA3, "<|begin_of_text|>", "<|end_of_text|>", "llama3"),
        (["<|begin_of_text|>"], "<|end_of_text|>"),
    ),
    "qwen / smollm2 instruct": (family(CHATML, None, "<|im_end|>", "chatml"), ([], "<|endoftext|>")),
    "mistral / lucie": (family(["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", "mistral"), (["<s>"], "</s>")),
    "no chat template": (family(CHATML, None, "<|im_end|>", None), ([], "<|im_end|>")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_document_boundaries_by_family(case):
    tokenizer, (opening, closing) = CASES[case]
    got_opening, got_closing = document_boundaries(tokenizer)
    assert tokenizer.convert_ids_to_tokens(got_opening) == opening
    assert tokenizer.convert_ids_to_tokens(got_closing) == closing


def test_packed_text_uses_them():
    tokenizer, _ = CASES["llama-3 instruct"]
    blocks, dropped = pack_text(["bonjour le médecin", "appel"], tokenizer, max_length=4)
    stream = [t for b in blocks for t in tokenizer.convert_ids_to_tokens(b)]
    assert stream == [
        "<|begin_of_text|>",
        "bonjour",
        "le",
        "médecin",
        "<|end_of_text|>",
        "<|begin_of_text|>",
        "appel",
        "<|end_of_text|>",
    ]
    assert dropped == 0


def test_text_stages_pack_with_the_end_of_text_and_keep_the_models_eos(tiny_model, tmp_path):
    """kd on raw text (the tiny default's tokenizer is SmolLM2-like: EOS = ChatML's <|im_end|>): the trainer's
    rows end documents with <|endoftext|>, and the saved model still stops generating at <|im_end|>."""
    from transformers import AutoConfig, AutoTokenizer

    from llm4all_recipes.cli import main
    from llm4all_recipes.data.mixture import load_data
    from llm4all_recipes.models import load_model, load_tokenizer
    from llm4all_recipes.parsing import parse_recipe
    from llm4all_recipes.training import make_trainer

    args = [
        "--config",
        "recipes/tiny-llama/kd/heal.yaml",
        "--model_name_or_path",
        str(tiny_model),
        "--teacher_model_name_or_path",
        str(tiny_model),
        "--max_steps",
        "1",
        "--save_steps",
        "1",
        "--push_to_hub",
        "false",
        "--output_dir",
        str(tmp_path / "kd"),
    ]
    recipe = parse_recipe("kd", args)
    tokenizer = load_tokenizer(str(tiny_model))
    train, _, _ = load_data(recipe, tokenizer, evals=False)
    trainer = make_trainer(
        recipe,
        tmp_path / "kd.tmp",
        model=load_model(str(tiny_model)),
        tokenizer=tokenizer,
        train_dataset=train,
        eval_datasets={},
    )
    ids = {t for row in trainer.train_dataset["input_ids"] for t in row}
    end, turn = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    assert end in ids and turn not in ids
    assert all(len(row) == recipe.max_length for row in trainer.train_dataset["input_ids"])
    assert main(["kd", *args]) == 0
    saved = AutoTokenizer.from_pretrained(tmp_path / "kd")
    assert saved.eos_token == "<|im_end|>" and AutoConfig.from_pretrained(tmp_path / "kd").eos_token_id == turn
    gen = json.loads((tmp_path / "kd" / "generation_config.json").read_text())["eos_token_id"]
    assert turn in ([gen] if isinstance(gen, int) else gen)
