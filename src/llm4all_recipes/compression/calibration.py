"""Calibration: activation statistics collected by forward hooks, one decoder layer at a time.

The GPTQ driver pattern: the model stays on the CPU; the hidden states entering the first decoder layer
are captured once, then each layer in turn is moved to the device, run on those states (batch by batch)
with hooks accumulating the statistics of its linear inputs, and its outputs become the next layer's
inputs. Only one layer and one layer's statistics are alive at a time.

Statistics are per *distinct input*: modules that read the same tensor (q/k/v read the attention input,
gate/up the MLP input) share one `InputStats`, found by comparing the tensors the hooks receive.
"""

import contextlib
import inspect
import random
import weakref
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import RecipeError


class InputStats:
    """Σ x xᵀ and Σ |x| of one layer input, accumulated in float64 (`add_batch`, as GPTQ's objects)."""

    live: "weakref.WeakSet[InputStats]" = weakref.WeakSet()  # for tests: how many are alive

    def __init__(self, dim: int, device: torch.device | str):
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.abs_sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = 0
        InputStats.live.add(self)

    chunk_rows = 2048  # tokens converted to float64 at a time: bounds the temporary, not the result

    @torch.no_grad()
    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        for chunk in x.split(self.chunk_rows):
            c = chunk.to(torch.float64)
            self.gram.addmm_(c.T, c)
            self.abs_sum += c.abs().sum(0)
        self.count += x.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)


class PairedStats:
    """Σ x̃ x̃ᵀ and Σ x x̃ᵀ of one layer input, token by token: x̃ what the layer receives in the model being
    compressed (the layers before it already compressed), x what it receives in the original model."""

    def __init__(self, dim: int, device: torch.device | str):
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.cross = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.count = 0

    @torch.no_grad()
    def add_batch(self, original: torch.Tensor, shifted: torch.Tensor) -> None:
        original, shifted = original.reshape(-1, original.shape[-1]), shifted.reshape(-1, shifted.shape[-1])
        for a, b in zip(original.split(InputStats.chunk_rows), shifted.split(InputStats.chunk_rows)):
            a, b = a.to(torch.float64), b.to(torch.float64)
            self.gram.addmm_(b.T, b)
            self.cross.addmm_(a.T, b)
        self.count += shifted.shape[0]


def calibration_ids(token_ids: list[int], n_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens drawn (seeded) from one token stream: (n_samples, seq_len)."""
    if len(token_ids) < seq_len:
        raise ValueError(f"calibration text has {len(token_ids)} tokens, fewer than one sample of {seq_len}")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(token_ids) - seq_len + 1) for _ in range(n_samples)]
    return torch.tensor([token_ids[s : s + seq_len] for s in starts], dtype=torch.long)


def calibration_windows(recipe, tokenizer, texts: list[str]) -> torch.Tensor:
    """A calibrated stage's windows (compress, prune): `num_calibration_samples` × `calibration_seq_len` tokens
    drawn with `seed` from its calibration text; a RecipeError naming the key when the text cannot give them."""
    from ..data.packing import corpus_ids

    if not any(text.strip() for text in texts):
        raise RecipeError("the calibration set is empty (no text)", key="datasets")
    stream = corpus_ids(tokenizer, texts)
    try:
        return calibration_ids(stream, recipe.num_calibration_samples, recipe.calibration_seq_len, recipe.seed)
    except ValueError as exc:
        raise RecipeError(str(exc), key="calibration_seq_len") from None


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, ModuleList) of the decoder blocks: the ModuleList with num_hidden_layers entries."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and name.split(".")[-1] in ("layers", "h", "blocks"):
            return name, module
    raise ValueError("cannot find the decoder layers of this model (a ModuleList of num_hidden_layers blocks)")


def layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(dotted name, ModuleList) of every stack of blocks, in the order the data flows through them: the decoder
    of a causal LM; the encoder then the decoder of an encoder-decoder model (Whisper)."""
    if not getattr(model.config, "is_encoder_decoder", False):
        return [decoder_layers(model)]
    names = {id(m): n for n, m in model.named_modules()}
    stacks = []
    for part in (model.get_encoder(), model.get_decoder()):
        layers = getattr(part, "layers", None)
        if not isinstance(layers, nn.ModuleList) or id(part) not in names:
            raise ValueError(f"cannot find the blocks of {type(part).__name__} (a `layers` ModuleList)")
        stacks.append((f"{names[id(part)]}.layers", layers))
    return stacks


def model_inputs(inputs: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Calibration inputs as the model's keyword arguments: token ids (n, L) of a causal LM, or a dict of tensors
    whose first dimension is the sample (a speech model's `input_features` + `decoder_input_ids`)."""
    return inputs if isinstance(inputs, dict) else {"input_ids": inputs}


def _keywords(forward, args: tuple, kwargs: dict) -> dict:
    """The arguments after the hidden states of a block's call, all by name (models pass some positionally)."""
    signature = inspect.signature(forward)
    params = signature.parameters
    first = next(iter(params))
    out = {}
    for name, value in signature.bind_partial(None, *args, **kwargs).arguments.items():
        if name == first:
            continue
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif params[name].kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValueError(f"a block called with extra positional arguments ({len(value)})")
        else:
            out[name] = value
    return out


class _Stop(Exception):
    pass


class LayerStream:
    """Hidden states flowing through one stack of blocks one block at a time (model kept on the CPU); `stack`
    defaults to the decoder of a causal LM (see `layer_stacks` for an encoder-decoder model's two)."""

    def __init__(
        self,
        model: nn.Module,
        ids: torch.Tensor | dict[str, torch.Tensor],
        *,
        device: str | torch.device,
        batch_size: int = 8,
        stack: tuple[str, nn.ModuleList] | None = None,
    ):
        self.model, self.device = model, torch.device(device)
        self.prefix, self.layers = stack or decoder_layers(model)
        self.inputs: list[torch.Tensor] = []  # per batch, on the CPU
        self.kwargs: list[dict] = []  # what the model passes to each layer (masks, rotary embeddings ...)
        self._capture(model_inputs(ids), batch_size)

    @torch.no_grad()
    def _capture(self, inputs: dict[str, torch.Tensor], batch_size: int) -> None:
        first = self.layers[0]
        stream = self

        class Catcher(nn.Module):
            def forward(self, hidden_states, *args, **kwargs):
                stream.inputs.append(hidden_states.detach().cpu())
                stream.kwargs.append(_keywords(first.forward, args, kwargs))
                raise _Stop

        self.layers[0] = Catcher()
        try:
            self._move_outside(self.device)  # embeddings, rotary embeddings, final norm, the encoder ...
            dtype = next(self.model.parameters()).dtype  # audio features follow the weights' dtype
            n = len(next(iter(inputs.values())))
            for start in range(0, n, batch_size):
                batch = {
                    k: v[start : start + batch_size].to(self.device, dtype if v.is_floating_point() else v.dtype)
                    for k, v in inputs.items()
                }
                with contextlib.suppress(_Stop):
                    self.model(**batch, use_cache=False)
        finally:
            self.layers[0] = first
            self._move_outside(torch.device("cpu"))

    def _move_outside(self, device: torch.device) -> None:
        for name, param in self.model.named_parameters():
            if not name.startswith(self.prefix + "."):
                param.data = param.data.to(device)
        for name, buf in self.model.named_buffers():
            if not name.startswith(self.prefix + "."):
                buf.data = buf.data.to(device)

    @torch.no_grad()
    def forward(self, layer: nn.Module, inputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Run one layer (already on the device) on every batch; outputs back on the CPU."""
        outputs = []
        for x, kwargs in zip(inputs if inputs is not None else self.inputs, self.kwargs):
            out = layer(x.to(self.device), **kwargs)
            outputs.append((out[0] if isinstance(out, tuple) else out).detach().cpu())
        return outputs


def distinct_inputs(layer: nn.Module, names: Iterable[str], run: Callable[[], None]) -> dict[str, str]:
    """{module: leader} where the leader is the first module reading the same input tensor (one batch run).

    The tensors are kept alive until the comparison: a freed temporary's memory is reused by the allocator,
    so comparing addresses of tensors that may be dead would merge unrelated inputs (it did: the MLP input
    was taken for the attention input at random, depending on the allocator's state).
    """
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        module = layer.get_submodule(name)

        def hook(mod, args, name=name):
            seen.setdefault(name, args[0])

        handles.append(module.register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    leaders: dict[str, str] = {}
    by_input: dict[tuple, str] = {}
    for name in names:
        x = seen[name]
        leaders[name] = by_input.setdefault((x.data_ptr(), tuple(x.shape), x.stride(), x.dtype), name)
    return leaders


def input_groups(layer: nn.Module, names: list[str], run: Callable[[], None]) -> list[list[str]]:
    """`names` grouped by the input tensor they read (q/k/v, gate/up), groups in the order the forward reaches
    them: the order in which a block can be compressed one input at a time."""
    leaders = distinct_inputs(layer, names, run)
    order: list[str] = []
    handles = [
        layer.get_submodule(name).register_forward_pre_hook(lambda mod, args, name=name: order.append(name))
        for name in names
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    groups: dict[str, list[str]] = {}
    for name in order:
        groups.setdefault(leaders[name], [])
    for name in names:
        groups[leaders[name]].append(name)
    return list(groups.values())


@torch.no_grad()
def input_of(layer: nn.Module, name: str, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """What module `name` of `layer` receives when the layer runs on `hidden` (the forward stops there)."""
    seen = []

    def hook(mod, args):
        seen.append(args[0])
        raise _Stop

    handle = layer.get_submodule(name).register_forward_pre_hook(hook)
    try:
        with contextlib.suppress(_Stop):
            layer(hidden, **kwargs)
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def collect_stats(
    stream: LayerStream, layer: nn.Module, names: list[str], desc: str = ""
) -> tuple[dict[str, InputStats], list[torch.Tensor]]:
    """Statistics of the inputs of `names` (modules of `layer`, on the device), one per distinct input,
    and the layer's outputs (CPU) computed in the same pass."""
    device = stream.device
    leaders = distinct_inputs(layer, names, lambda: stream.forward(layer, stream.inputs[:1]))
    stats: dict[str, InputStats] = {}
    handles = []
    for leader in sorted(set(leaders.values())):
        module = layer.get_submodule(leader)
        stats[leader] = InputStats(module.in_features, device)
        handles.append(module.register_forward_pre_hook(lambda mod, args, s=stats[leader]: s.add_batch(args[0])))
    try:
        outputs = []
        for x, kwargs in tqdm(list(zip(stream.inputs, stream.kwargs)), desc=desc, leave=False, disable=not desc):
            out = layer(x.to(device), **kwargs)
            outputs.append((out[0] if isinstance(out, tuple) else out).detach().cpu())
    finally:
        for h in handles:
            h.remove()
    return {name: stats[leaders[name]] for name in names}, outputs
