"""Test-only fault injection for subprocesses (on PYTHONPATH only in fault tests, never installed).

LLM4ALL_FAULT="<step>:<phase>" makes the Trainer stop while it saves checkpoint-<step>, at an exact point:
  weights     checkpoint-<step>/ holds the model weights, nothing else yet
  optimizer   weights, optimizer, scheduler and RNG state, but no trainer_state.json
  state       trainer_state.json half-written (truncated JSON)
  saved       the checkpoint is complete
LLM4ALL_FAULT="merge:<n>" stops a training stage as it writes the n-th point (from 1) of its merge-with-base grid
into the model (trained weights saved, the grid half done).
LLM4ALL_FAULT="generate:<shard>:<phase>" stops `llm4all generate` at shard <shard>:
  part        its rows half written to shard-<shard>.jsonl.part (not renamed into place)
  written     the shard file complete, the next one not started
There it writes the file named by LLM4ALL_FAULT_READY, then sleeps until it is killed (kill -9 by the test),
or until the file LLM4ALL_FAULT_GO appears (then it goes on as if nothing happened).
"""

import os

_fault = os.environ.get("LLM4ALL_FAULT")


def _stop_here() -> None:
    import pathlib
    import time

    pathlib.Path(os.environ["LLM4ALL_FAULT_READY"]).write_text(str(os.getpid()))
    go = os.environ.get("LLM4ALL_FAULT_GO")
    while not (go and os.path.exists(go)):
        time.sleep(0.05)


if _fault and _fault.startswith("merge:"):
    _n, _calls = int(_fault.split(":")[1]), []
    import llm4all_recipes.merging as _m

    _apply = _m.BaseInterpolation.apply

    def apply(self, alpha):
        _calls.append(alpha)
        if len(_calls) == _n:
            _stop_here()
        return _apply(self, alpha)

    _m.BaseInterpolation.apply = apply
elif _fault and _fault.startswith("generate:"):
    _, _shard, _phase = _fault.split(":")
    import json

    import llm4all_recipes.stages.generate as _g

    _write_shard = _g.write_shard

    def write_shard(folder, index, rows):
        if index == int(_shard) and _phase == "part":
            with open(folder / f"shard-{index:05d}.jsonl.part", "w", encoding="utf-8") as f:
                for row in rows[: max(1, len(rows) // 2)]:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            _stop_here()
        _write_shard(folder, index, rows)
        if index == int(_shard) and _phase == "written":
            _stop_here()

    _g.write_shard = write_shard
elif _fault:
    _step, _phase = _fault.split(":")
    _step = int(_step)
    import transformers.trainer as _t
    import transformers.trainer_callback as _cb

    _save_model, _save_rng, _save_json = (
        _t.Trainer.save_model,
        _t.Trainer._save_rng_state,
        _cb.TrainerState.save_to_json,
    )

    def save_model(self, output_dir=None, _internal_call=False):
        _save_model(self, output_dir, _internal_call)
        if _internal_call and self.state.global_step == _step and _phase == "weights":
            _stop_here()

    def _save_rng_state(self, output_dir):
        _save_rng(self, output_dir)
        if self.state.global_step == _step and _phase == "optimizer":
            _stop_here()

    def save_to_json(self, json_path):
        if self.global_step == _step and _phase == "state":
            import dataclasses
            import json

            text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
            with open(json_path, "w", encoding="utf-8") as f:
                f.write(text[: len(text) // 2])
            _stop_here()
        _save_json(self, json_path)
        if self.global_step == _step and _phase == "saved":
            _stop_here()

    _t.Trainer.save_model = save_model
    _t.Trainer._save_rng_state = _save_rng_state
    _cb.TrainerState.save_to_json = save_to_json
