"""Native names as an escape hatch: what trains, said in one framework's own terms.

A phase may say what trains as one framework says it (``common.config.NATIVE_KEYS``; the
backend whose ``BackendInfo.native_key`` it is owns it):

* slim ``trainable_scopes`` (``--trainable_scopes``: variable scopes, a variable trains
  when its name is one of them or below one);
* Keras ``unfreeze_from`` (a layer index: ``model.layers[i:]`` train and the layers
  before stay frozen, the keras.io InceptionV3 guide's 249);
* PyTorch ``modules`` (module paths, dotted for a submodule: ``Mixed_7c.branch_pool``,
  ``features.17``).

Framework-free (the catalogs only), so ``bench run`` checks a recipe in its own
process before any run starts. ``selection`` validates the names against the
model of the framework they belong to (an unknown name is one line naming it and
what exists) and maps them to canonical blocks: the blocks trained whole, the
blocks trained in part, whether the head trains, and whether the selection is
*exact* (whole blocks plus the head: what a canonical ``train = "blocks"`` phase
says). The backend they belong to applies them as written; any other backend runs
the phase only when the selection is exact, as those blocks (``phase_for``), and
refuses it in one line otherwise.

The recipe's ``checkpoint_exclude_scopes`` (slim's flag) is read the same way:
slim leaves those scopes at their initial values; the other backends always
exclude the head and accept the flag only when it names nothing more than the
head's scopes (``check_exclude_scopes``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from common.config import ConfigError, Phase, Recipe
from common.models import HEAD, MODELS

@dataclass(frozen=True)
class Selection:
    """A native selection mapped to canonical blocks."""

    key: str                              # trainable_scopes | unfreeze_from | modules
    framework: str                        # slim | keras | pytorch
    names: tuple                          # as written (scopes, module names, or (index,))
    blocks: tuple[str, ...]               # canonical blocks trained whole, in model order
    partial: dict = field(default_factory=dict)  # block -> the native names training part of it
    head: bool = True                     # whether the head trains

    @property
    def exact(self) -> bool:
        """Whole blocks and the head: a canonical phase of these blocks."""
        return self.head and not self.partial

    def describe(self) -> dict:
        """The phase report's ``native_selection``."""
        return {"key": self.key, "framework": self.framework, "names": list(self.names),
                "canonical_blocks": list(self.blocks) + ([HEAD] if self.head else []),
                "partially_trained_blocks": {b: list(n) for b, n in self.partial.items()},
                "exact": self.exact}


def framework_of(key: str) -> str:
    """The registry entry that owns native key ``key``: the first whose
    ``BackendInfo.native_key`` it is (``unfreeze_from`` -> ``keras``, not ``keras-jax``);
    its catalog holds the names the key takes."""
    from backends.base import loaded_infos

    for name, info in loaded_infos():
        if info.native_key == key:
            return name
    raise ConfigError(f"{key}: no backend of this installation says what trains with it")


def family(backend: str) -> str | None:
    """The registry entry owning ``backend``'s native key (``keras-jax`` -> ``keras``), None
    for a backend without one (a plug-in: canonical phases only)."""
    from backends.base import backend_info

    key = backend_info(backend).native_key
    return framework_of(key) if key else None


def _entry(framework: str, model: str, where: str, key: str):
    from backends.base import BackendError, backend_info

    try:
        return backend_info(framework).entry(model)
    except BackendError as err:
        raise ConfigError(f"{where}: {key} names {framework} names, but {err}") from None


def _in(name: str, scope: str) -> bool:
    return name == scope or name.startswith(scope + "/")


def selection(phase: Phase, model: str, where: str = "recipe") -> Selection | None:
    """The phase's native selection checked against ``model`` and mapped to canonical
    blocks, or None for a canonical phase; ``ConfigError`` (one line) for a bad name."""
    key = phase.native_key
    if key is None:
        return None
    framework = framework_of(key)
    spec = MODELS[model]
    entry = _entry(framework, model, where, key)
    if key in _NAMED:
        return _named_selection(key, getattr(phase, key), spec, entry, where)
    return _keras_selection(phase.unfreeze_from, spec, entry, where)


def _below(name: str, path: str) -> bool:
    """Module path ``name`` is ``path`` or one of its submodules."""
    return name == path or name.startswith(path + ".")


#: native key -> ("name lies within native name", what a name must be, what exists); the key's
#: framework is the backend that declares it (``framework_of``)
_NAMED = {
    "trainable_scopes": (_in, "a variable scope of slim {model}", "its scopes are"),
    "modules": (_below, "a module of torchvision {model}", "the modules of its blocks are"),
}


def _named_selection(key: str, names, spec, entry, where) -> Selection:
    """Slim scopes or torch module paths: a block is trained whole when every native name
    of it lies within a named one, in part when a named one lies within it."""
    within, what, exists = _NAMED[key]
    framework = framework_of(key)
    known = list(dict.fromkeys(n for block in (*spec.blocks, HEAD) for n in entry.native(block)))
    for name in names:
        if not any(within(name, k) or within(k, name) for k in known):
            raise ConfigError(f"{where}: {key} names {name!r}, which is not "
                              f"{what.format(model=spec.name)}; {exists}: {', '.join(known)}")
    full, partial = [], {}
    for block in spec.blocks:
        native = entry.native(block)
        if all(any(within(n, name) for name in names) for n in native):
            full.append(block)
        else:
            inside = [name for name in names if any(within(name, n) for n in native)]
            if inside:
                partial[block] = tuple(inside)
    head = all(any(within(h, name) for name in names) for h in entry.head)
    return Selection(key, framework, tuple(names), tuple(full), partial, head)


def _keras_selection(index: int, spec, entry, where) -> Selection:
    starts, base = entry.first_layers, entry.base_layers
    if not 0 <= index <= base:
        raise ConfigError(f"{where}: unfreeze_from = {index} is not a layer index of Keras "
                          f"{spec.name}: its backbone has layers 0..{base - 1} (the head follows); "
                          f"its blocks start at {', '.join(f'{b} {i}' for b, i in starts.items())}")
    full, partial = [], {}
    for pos, block in enumerate(spec.blocks):
        first = starts[block]
        last = starts[spec.blocks[pos + 1]] - 1 if pos + 1 < len(spec.blocks) else base - 1
        if index <= first:
            full.append(block)
        elif index <= last:
            partial[block] = (f"layers {index}..{last} of {first}..{last}",)
    return Selection("unfreeze_from", framework_of("unfreeze_from"), (index,), tuple(full), partial,
                     True)


def phase_for(phase: Phase, backend: str, model: str, where: str = "recipe") -> Phase:
    """The phase ``backend`` runs: as written for its own framework (and for a canonical
    phase); as its canonical blocks for another framework when the selection is exact;
    else ``ConfigError`` naming what does not align."""
    chosen = selection(phase, model, where)
    if chosen is None or family(backend) == chosen.framework:
        return phase
    if not chosen.exact:
        what = (f"parts of {', '.join(chosen.partial)}" if chosen.partial
                else "the backbone without the head")
        raise ConfigError(f"{where}: {chosen.key} = {_shown(chosen)} trains {what}, which the "
                          f"canonical blocks cannot say; only the {chosen.framework} backend "
                          f"applies it (run --backend {chosen.framework}), or name whole blocks "
                          f"and the head")
    cleared = {"trainable_scopes": (), "unfreeze_from": None, "modules": ()}
    if not chosen.blocks:
        return dataclasses.replace(phase, train="head", **cleared)
    return dataclasses.replace(phase, train="blocks", blocks=chosen.blocks, **cleared)


def _shown(chosen: Selection) -> str:
    return str(chosen.names[0]) if chosen.key == "unfreeze_from" else ",".join(chosen.names)


def check_exclude_scopes(recipe: Recipe, backend: str, model: str) -> None:
    """``checkpoint_exclude_scopes`` for ``backend``: slim takes any of the model's scopes;
    another backend excludes the head anyway and refuses anything more (one line)."""
    scopes = recipe.checkpoint_exclude_scopes
    if not scopes:
        return
    where = recipe.source or recipe.name
    # slim's flag, in variable scopes: the names of the backend whose native key is scopes
    scopes_framework = framework_of("trainable_scopes")
    entry = _entry(scopes_framework, model, where, "checkpoint_exclude_scopes")
    spec = MODELS[model]
    known = [s for block in (*spec.blocks, HEAD) for s in entry.native(block)]
    for scope in scopes:
        if not any(_in(scope, s) or _in(s, scope) for s in known):
            raise ConfigError(f"{where}: checkpoint_exclude_scopes names {scope!r}, which is not a "
                              f"variable scope of slim {spec.name}; its scopes are: "
                              f"{', '.join(known)}")
    if family(backend) == scopes_framework:
        return
    head = entry.native(HEAD)
    beyond = [s for s in scopes if not any(_in(s, h) for h in head)]
    if beyond:
        raise ConfigError(f"{where}: checkpoint_exclude_scopes = {','.join(scopes)} leaves "
                          f"{', '.join(beyond)} unrestored; the {backend} backend never restores "
                          f"the head ({', '.join(head)}) and restores everything else, so only the "
                          f"slim backend applies it")


def check_recipe(recipe: Recipe, backend: str, model: str) -> None:
    """Every native name of ``recipe`` checked for ``backend`` (``bench run``, before any run)."""
    if family(backend) is None:  # a plug-in without a catalog: canonical phases only
        for i, phase in enumerate(recipe.phases):
            if phase.native_key:
                raise ConfigError(f"{recipe.source} phase {i + 1}: {phase.native_key} names "
                                  f"{framework_of(phase.native_key)} names; the {backend} backend "
                                  f"runs canonical phases only")
        return
    for i, phase in enumerate(recipe.phases):
        phase_for(phase, backend, model, f"{recipe.source} phase {i + 1}")
    check_exclude_scopes(recipe, backend, model)


def coverage(counts: dict[str, tuple[int, int]]) -> tuple[list[str], dict[str, float]]:
    """``(blocks trained whole, {block: share of its parameters trained})`` from
    ``block -> (trained parameters, parameters)`` (the phase report of a native selection)."""
    full = [b for b, (t, n) in counts.items() if n and t == n]
    part = {b: round(t / n, 4) for b, (t, n) in counts.items() if n and 0 < t < n}
    return full, part
