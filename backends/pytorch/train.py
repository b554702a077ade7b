"""Phases and the training loop, the PyTorch way.

PyTorch idiom (torchvision ``references/classification/train.py``):
freezing is ``requires_grad_(False)`` on modules, discriminative learning
rates are optimizer *param groups*, BatchNorm's mode is the module's
``train()`` / ``eval()`` flag, and one epoch is a plain ``train_one_epoch``
function: forward, loss, ``backward()``, ``optimizer.step()``. Mixed
precision is ``torch.autocast`` around the forward pass and the loss (fit,
prediction and the throughput steps alike); prediction runs under
``torch.inference_mode``.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch
from torch import nn

from backends.base import BackendError, ModelEntry
from common.config import Fidelity, Phase
from common.models import HEAD, ModelSpec
from common.preprocess import Normalisation
from common.progress import progress

from .data import normalise
from .model import block_modules, in_modules

# slim's inception_v3 train_image_classifier weights the aux loss by 0.4
AUX_LOSS_WEIGHT = 0.4


def trainable_modules(model: nn.Module, spec: ModelSpec, entry: ModelEntry,
                      phase: Phase) -> dict[str, nn.Module]:
    """Modules ``phase`` trains, by path: its canonical blocks, then the head (and AuxLogits);
    or, for a phase that names ``modules`` (PyTorch's own names, dotted for a submodule), those."""
    if phase.modules:
        return {name: submodule(model, name) for name in phase.modules}
    modules = {}
    for block in (*phase.trainable_blocks(spec), HEAD):
        modules.update(block_modules(model, entry, block))
    return modules


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, or a one-line error naming what the parent holds."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if module is None:  # AuxLogits is None without the aux head
        parent_name, _, _ = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            children = [n for n, m in parent.named_children() if m is not None]
        except AttributeError:
            children = [n for n, _ in model.named_children()]
            parent_name = ""
        raise BackendError(f"modules names {name!r}, which this {type(model).__name__} does not "
                           f"have; {parent_name or 'the model'} has: {', '.join(children)}")
    return module


# --8<-- [start:freeze]
def freeze_all_but(model: nn.Module, trainable: dict[str, nn.Module]) -> None:
    """``requires_grad`` True exactly for the parameters of ``trainable`` modules."""
    model.requires_grad_(False)
    for module in trainable.values():
        module.requires_grad_(True)
# --8<-- [end:freeze]


def set_train_modes(model: nn.Module, trainable: dict[str, nn.Module], bn: str) -> None:
    """``model.train()``, then BatchNorm back in ``eval()``: outside the ``trainable`` modules
    when ``bn="frozen"``, everywhere when ``bn="inference"``.

    ``model.train()`` resets every submodule, so this runs at the start of each epoch.
    """
    # --8<-- [start:batchnorm]
    model.train()
    if bn == "train":
        # PyTorch's default: requires_grad=False does not stop a BN layer in train() mode
        # from normalising with batch statistics and updating running_mean/var. Keras
        # (trainable=False) and the suite's default instead keep frozen BN in inference.
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
                bn == "inference" or not in_modules(name, trainable)):
            # running statistics used, never updated; with bn = "inference" the BN of trained
            # modules too (Keras' base_model(x, training=False)), while their beta (bias) and
            # any gamma (weight) keep requires_grad and train
            module.eval()
    # --8<-- [end:batchnorm]


def param_groups(model: nn.Module, entry: ModelEntry, phase: Phase) -> list[dict]:
    """Trainable parameters as two groups: ``backbone`` (x1) and ``head`` (x head_lr_multiplier)."""
    # --8<-- [start:optimizer]
    head_ids = {id(p) for m in block_modules(model, entry, HEAD).values() for p in m.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    # Extra keys in a param group ("name", "lr_multiplier") are kept by torch.optim and saved
    # in optimizer.state_dict(); Keras has one learning rate per optimizer instead.
    return [
        {"params": backbone, "name": "backbone", "lr_multiplier": 1.0,
         "lr": phase.learning_rate},
        {"params": head, "name": "head", "lr_multiplier": phase.head_lr_multiplier,
         "lr": phase.learning_rate * phase.head_lr_multiplier},
    ]
    # --8<-- [end:optimizer]


class RMSpropEpsilonInside(torch.optim.Optimizer):
    """RMSprop with epsilon inside the square root, ``g / sqrt(square_avg + eps)``, as Keras 3
    and TensorFlow's ``RMSPropOptimizer`` (slim) compute it; ``torch.optim.RMSprop`` divides by
    ``sqrt(square_avg) + eps``. The slot starts at 0 and the momentum buffer, the weight decay
    (``grad + wd * w``) and per-group hyperparameters are torch's. ``fidelity.rmsprop =
    "aligned"`` (docs/differences.md)."""

    def __init__(self, params, lr: float, alpha: float, eps: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps, m, wd = group["alpha"], group["eps"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p)
                    if m:
                        state["momentum_buffer"] = torch.zeros_like(p)
                square_avg = state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                update = grad / (square_avg + eps).sqrt()
                if m:
                    update = state["momentum_buffer"].mul_(m).add_(update)
                p.add_(update, alpha=-group["lr"])
        return loss


def kernels_only_decay(groups: list[dict], weight_decay: float) -> list[dict]:
    """Each group split in two: its kernels (conv and linear weights, ``ndim > 1``) with
    ``weight_decay``, the rest (biases, BatchNorm betas and gammas) with none, slim's
    ``l2_regularizer`` set (``fidelity.weight_decay = "aligned"``)."""
    out = []
    for g in groups:
        kernels = [p for p in g["params"] if p.ndim > 1]
        rest = [p for p in g["params"] if p.ndim <= 1]
        out.append({**g, "params": kernels, "weight_decay": weight_decay})
        out.append({**g, "params": rest, "name": f"{g['name']}_no_decay", "weight_decay": 0.0})
    return out


def make_optimizer(phase: Phase, groups: list[dict], fidelity: Fidelity = Fidelity()
                   ) -> tuple[torch.optim.Optimizer, str]:
    """The ``torch.optim`` optimizer for ``phase`` and a one-line description of it;
    ``fidelity`` (the recipe's switches) says where the suite aligns torch's step."""
    m, wd, eps = phase.effective_momentum, phase.weight_decay, phase.epsilon
    aligned_decay = wd and fidelity.aligned("weight_decay")
    if aligned_decay:
        groups = kernels_only_decay(groups, wd)
    groups = [g for g in groups if g["params"]]  # torch.optim refuses an empty group
    lr = phase.learning_rate  # PyTorch spells it lr=, Keras learning_rate=
    if phase.optimizer in ("sgd", "momentum"):
        # PyTorch: v = m*v + g; p -= lr*v. Keras/TF: v = m*v - lr*g; p += v (equal at fixed lr).
        # weight_decay here is an L2 term added to the gradient (coupled).
        # --8<-- [start:optimizer]
        opt = torch.optim.SGD(groups, lr=lr, momentum=m, weight_decay=wd)
        # --8<-- [end:optimizer]
        desc = f"torch.optim.SGD(momentum={m}, weight_decay={wd})"
    elif phase.optimizer == "rmsprop" and fidelity.aligned("rmsprop"):
        opt = RMSpropEpsilonInside(groups, lr=lr, alpha=phase.rmsprop_rho, eps=eps, momentum=m,
                                   weight_decay=wd)
        desc = (f"RMSpropEpsilonInside(alpha={phase.rmsprop_rho}, eps={eps} inside the root, "
                f"momentum={m}, weight_decay={wd})")
    elif phase.optimizer == "rmsprop":
        # PyTorch adds eps outside the square root: g / (sqrt(avg) + eps); Keras and
        # tf.compat.v1 (slim) add it inside: g / sqrt(avg + eps). alpha= is Keras' rho=.
        opt = torch.optim.RMSprop(groups, lr=lr, alpha=phase.rmsprop_rho, eps=eps, momentum=m,
                                  weight_decay=wd)
        desc = f"torch.optim.RMSprop(alpha={phase.rmsprop_rho}, eps={eps}, momentum={m}, weight_decay={wd})"
    elif phase.optimizer == "adam":
        # Adam's weight_decay in PyTorch is L2 added to the gradient (coupled), not AdamW.
        opt = torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=wd)
        desc = f"torch.optim.Adam(betas=(0.9, 0.999), eps={eps}, weight_decay={wd})"
    elif phase.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=wd)
        desc = f"torch.optim.AdamW(betas=(0.9, 0.999), eps={eps}, weight_decay={wd})"
    else:
        raise BackendError(f"unknown optimizer {phase.optimizer!r}")
    if aligned_decay:
        desc += " on conv/linear kernels only"
    return opt, desc


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Base LR for every group, times the group's ``lr_multiplier``."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("lr_multiplier", 1.0)


def autocast(device: torch.device, precision: str):
    """``torch.autocast(device, bfloat16)`` for ``precision == "bf16"``, a no-op for fp32.

    Mixed precision, PyTorch's way: convolutions and matmuls run in bfloat16 while the
    weights, the optimizer state, BatchNorm statistics and the loss stay fp32 (bf16 needs
    no ``GradScaler``: it has fp32's exponent range).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def dtype_name(tensor: torch.Tensor) -> str:
    """``"bfloat16"``, ``"float32"``: the dtype a forward pass really computed in."""
    return str(tensor.dtype).removeprefix("torch.")


def compute_loss(outputs, labels: torch.Tensor, criterion: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits); Inception's train-mode ``InceptionOutputs`` adds 0.4 x aux loss."""
    if isinstance(outputs, tuple):  # torchvision InceptionOutputs(logits, aux_logits)
        logits, aux = outputs
        loss = criterion(logits, labels)
        if aux is not None:
            loss = loss + AUX_LOSS_WEIGHT * criterion(aux, labels)
        return loss, logits
    return criterion(outputs, labels), outputs


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    device: torch.device, norm: Normalisation, on_step=None,
                    precision: str = "fp32", desc: str = "") -> dict:
    """One pass over ``loader`` (modes already set): mean loss, top-1, images, seconds, and
    ``compute_dtype``, the dtype the logits were computed in (``bfloat16`` under autocast).
    ``desc`` names the pass in its progress bar (``common.progress``).

    Losses and hits stay on the device until the epoch ends (``on_step`` then gets each
    step's loss, in order): reading a value back every step (``loss.item()``) would make
    the host wait for the device at each step, and the next batch's copy with it."""
    step_losses, hits, sizes = [], [], []
    compute_dtype = None
    t0 = time.perf_counter()
    # --8<-- [start:fit]
    for images, labels in progress(loader, len(loader), desc):
        images = normalise(images.to(device, non_blocking=True), norm)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)  # before the forward pass: lower peak memory
    # --8<-- [end:fit]
        try:
            # --8<-- [start:fit]
            with autocast(device, precision):
                outputs = model(images)
                loss, logits = compute_loss(outputs, labels, criterion)
            # --8<-- [end:fit]
        except ValueError as err:
            if "Expected more than 1 value per channel" in str(err):
                raise BackendError(
                    f"a training batch of {len(labels)} image reached a BatchNorm layer in train mode "
                    f"on 1x1 features, which PyTorch cannot normalise; choose a --batch-size that "
                    f"does not leave a last batch of 1 ({len(loader.dataset)} training images)"
                ) from None
            raise
        compute_dtype = dtype_name(logits)
        # --8<-- [start:fit]
        loss.backward()  # outside autocast, as torch.autocast's documentation prescribes
        optimizer.step()
        # --8<-- [end:fit]
        step_losses.append(loss.detach())
        hits.append((logits.argmax(1) == labels).sum())
        sizes.append(len(labels))
    # one read back per epoch (it waits for the last step, so the clock stops after it)
    losses = torch.stack(step_losses).float().cpu().tolist() if step_losses else []
    correct = int(torch.stack(hits).sum()) if hits else 0
    seconds, seen = time.perf_counter() - t0, sum(sizes)
    if on_step is not None:
        for value in losses:
            on_step(value)
    total_loss = sum(value * n for value, n in zip(losses, sizes))
    return {"loss": total_loss / max(seen, 1), "top1": correct / max(seen, 1), "images": seen,
            "seconds": seconds, "compute_dtype": compute_dtype}


# --8<-- [start:predict]
@torch.inference_mode()
def predict_batches(model: nn.Module, loader, device: torch.device, norm: Normalisation, fn=None,
# --8<-- [end:predict]
                    precision: str = "fp32", desc: str = "") -> tuple:
    """``fn(model, images)`` (default: the model) over ``loader`` in eval mode, concatenated
    as float32 numpy, and the dtype the outputs were computed in (None: empty loader)."""
    # --8<-- [start:predict]
    model.eval()
    # --8<-- [end:predict]
    outs, compute_dtype = [], None
    for images, _ in progress(loader, len(loader), desc):
        images = normalise(images.to(device, non_blocking=True), norm)
        with autocast(device, precision):
            # --8<-- [start:predict]
            out = fn(model, images) if fn else model(images)
            # --8<-- [end:predict]
        compute_dtype = dtype_name(out)
        outs.append(out.float().cpu())
    return (torch.cat(outs).numpy() if outs else None), compute_dtype


class ScalarWriter:
    """TensorBoard scalars in ``logdir`` (an ``events.out.tfevents.*`` file), opened lazily.

    Not ``torch.utils.tensorboard.SummaryWriter``: importing it imports TensorFlow
    whenever TensorFlow is installed (its embedding module resolves
    ``tensorboard.compat.tf``), which would add seconds and hundreds of MB to the
    PyTorch run's peak memory. This writes the same event records with
    tensorboard's TensorFlow-free record writer. No tensorboard: nothing is written.
    """

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self._writer = None
        self._event = self._summary = None
        self._failed = False

    def _open(self) -> bool:
        if self._writer is not None or self._failed:
            return self._writer is not None
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            self._failed = True
            return False
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = RecordWriter(open(self.logdir / name, "wb"))
        self._writer.write(self._event(wall_time=time.time(), file_version="brain.Event:2")
                           .SerializeToString())
        return True

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self._open():
            return
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
                  if v is not None]
        self._writer.write(self._event(wall_time=time.time(), step=int(step),
                                       summary=self._summary(value=values)).SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
