"""A stand-in for vLLM's offline API, for tests only (never installed): `LLM(model=..., ...)` and
`LLM.generate(prompts, SamplingParams, use_tqdm=...)` with `{"prompt_token_ids": [...]}` prompts, returning objects
with `.outputs[0].text / .token_ids / .finish_reason`, as vLLM documents them. Here the answers come from
transformers' greedy `generate`, one prompt at a time, so that llm4all's vLLM adapter (prompt ids, truncation,
token counts) is exercised without a GPU; vLLM itself is not."""

from types import SimpleNamespace

CALLS: list[dict] = []


class SamplingParams:
    def __init__(self, n=1, max_tokens=16, seed=None, temperature=1.0, top_p=1.0):
        self.n, self.max_tokens, self.seed, self.temperature, self.top_p = (
            n,
            max_tokens,
            seed,
            temperature,
            top_p,
        )


class LLM:
    def __init__(self, model, tokenizer=None, revision=None, dtype="auto", seed=0, max_model_len=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        CALLS.append({"model": model, "dtype": dtype, "seed": seed, "max_model_len": max_model_len})
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)

    def generate(self, prompts, params, use_tqdm=True):
        import torch

        assert params.temperature == 0.0, "the stub decodes greedily only"
        eos, results = self.tokenizer.eos_token_id, []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            with torch.no_grad():
                out = self.model.generate(
                    ids, max_new_tokens=params.max_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
                )
            new = out[0, ids.shape[1] :].tolist()
            finish = "stop" if eos in new else "length"
            new = new[: new.index(eos)] if eos in new else new
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            results.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=new, finish_reason=finish)]))
        return results
