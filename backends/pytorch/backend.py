"""The PyTorch backend: torchvision models, requires_grad + param groups, state_dict ``.pt``.

A thin class over plain functions: ``recipe.py`` is the transfer recipe in
PyTorch's words (build with a new head, restore without it, ``requires_grad``,
BatchNorm ``eval()``, ``torch.optim`` param groups, ``train_one_epoch``,
predict), ``describe.py`` the words a phase's result records, ``train.py``
the epoch statistics and predictions around the recipe's loops, ``model.py``
the torchvision models and canonical blocks, ``data.py`` the ``DataLoader``
over the common split, ``weights.py`` ``state_dict`` checkpoints (head
excluded), ``throughput.py`` timed model steps.
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from backends.base import Backend, BackendError, WeightsRequest
from common.config import Phase, RunConfig
from common.data import Split
from common.models import ModelSpec
from common.parallel import is_parallel, per_device_batch
from common.preprocess import get_normalisation, get_preset
from common.results import cpu_name

from . import data, export as export_lib, model as model_lib, parallel as parallel_lib, recipe
from . import convert as convert_lib, throughput as throughput_lib, train, weights as weights_lib
from .describe import describe_phase


class PyTorchBackend(Backend):
    name = "pytorch"
    checkpoint_suffix = ".pt"
    compile_modes = ("torch.compile",)

    def __init__(self, config: RunConfig, run_dir: Path):
        super().__init__(config, run_dir)
        self.device_ = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # data parallel (parallel.py): this process is one torchrun worker of `world`
        self.rank, self.world = 0, 1
        if is_parallel(config.train):
            self.rank, self.world, self.device_ = parallel_lib.init_process_group(config.train)
        self.ddp: nn.Module | None = None  # the phase's DistributedDataParallel wrapper
        self.model: nn.Module | None = None
        self.trainable: dict[str, nn.Module] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self._compiled: nn.Module | None = None  # torch.compile(self.model), made when first timed
        self.writer = train.ScalarWriter(self.run_dir / "tensorboard")
        self._step = 0
        # dtypes the logits were computed in, per path (precision_used reports them)
        self._computed: dict[str, set[str]] = {"train": set(), "eval": set()}

    # -- environment -----------------------------------------------------
    def frameworks(self) -> dict[str, str]:
        return {"torch": torch.__version__, "torchvision": torchvision.__version__}

    def device(self) -> dict:
        if self.device_.type == "cuda":
            name = torch.cuda.get_device_name(self.device_)
        else:
            name = cpu_name()
        return {"kind": self.device_.type, "name": name, "threads": torch.get_num_threads()}

    # -- data and model --------------------------------------------------
    def _setup(self, split: Split, image_size: int) -> None:
        seed = self.config.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if "LOCAL_WORLD_SIZE" in os.environ:
            # under torchrun, the node's cores are shared by its worker processes
            torch.set_num_threads(max(1, (cores or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
        elif not os.environ.get("OMP_NUM_THREADS"):  # set: torch has read it, the user's choice
            torch.set_num_threads(cores or 1)
        bs, workers = per_device_batch(self.config.train), self.config.data.num_workers
        distributed = self.world > 1
        # one DataLoader per split, kept across epochs (torchvision references): the train
        # loaders reshuffle through data.set_epoch, with and without augmentation; under DDP
        # each rank reads its DistributedSampler's share, batch_size per device
        preset = get_preset(self.config.recipe.preprocessing)
        self.train_loaders = {augment: data.train_loader(
            split.train, image_size, bs, augment=augment, seed=seed, num_workers=workers,
            sampler=parallel_lib.train_sampler(len(split.train), seed) if distributed else None,
            preset=preset, common_sampler=self.config.recipe.fidelity.aligned("crop_sampler"))
            for augment in (False, True)}
        self.eval_loaders = {name: data.eval_loader(
            split.subset(name), image_size, bs, workers,
            sampler=parallel_lib.eval_sampler(len(split.subset(name))) if distributed else None,
            preset=preset)
            for name in ("train", "val", "test")}

    def _build(self, model: ModelSpec, num_classes: int, weights: WeightsRequest,
               head_hidden_units: int) -> None:
        self.norm = get_normalisation(self.preprocessing_name())
        torch.manual_seed(self.config.train.seed)  # random init depends on the seed only
        # torchvision's own Inception3 for its ImageNet weights (also when a finished run of
        # them is rebuilt without weights to be restored); the aligned one (entry.alignment:
        # Keras' and slim's computation) for suite-made weights and random init
        native = self.starts_from_native_imagenet() or weights.kind == "imagenet"
        net = recipe.build_model(model, self.entry, num_classes, head_hidden_units,
                                 aux_logits=self.config.model.aux_logits,
                                 image_size=self.image_size or None, aligned=not native,
                                 dropout=self.config.recipe.dropout,
                                 float32_head=self.config.recipe.fidelity.aligned("head_dtype"))
        head = self.aligned_head(head_hidden_units)
        if head is not None:  # fidelity head_init = "aligned": the common draw, not nn.Linear's
            convert_lib.write_head(net, model.name, head)
        if weights.kind == "path":
            file = Path(weights.path or "")
            if not file.is_file() and weights_lib.checkpoint_file(file).is_file():
                file = weights_lib.checkpoint_file(file)
            state = weights_lib.model_state(weights_lib.load_checkpoint(file))
            self.restore_report = weights_lib.restore_excluding_head(
                net, self.entry, state, f"checkpoint {str(file)!r}", weights.ignore_missing_vars)
        elif weights.kind == "imagenet":
            state = weights_lib.imagenet_state(model.name, self.entry)
            self.restore_report = weights_lib.restore_excluding_head(
                net, self.entry, state, f"ImageNet weights for {model.name}",
                weights.ignore_missing_vars)
        elif weights.kind == "none":
            state = None
        else:
            raise BackendError(f"unknown weights kind {weights.kind!r}; use none, imagenet or path")
        if weights.reuse_head_rows:
            if state is None:
                raise BackendError("reuse_head_rows needs weights to copy the rows from")
            weights_lib.copy_head_rows(net, self.entry, state, weights.reuse_head_rows)
        # channels_last: NCHW shapes with NHWC memory (TensorFlow's layout), which oneDNN's
        # CPU convolutions and cuDNN's tensor cores prefer; compare with a plain NCHW loop
        # with benchmarks/bench_torch_vs_minimal.py.
        net = net.to(self.device_, memory_format=torch.channels_last)
        if self.world > 1 and self.config.train.sync_bn:
            # bn = "train" phases normalise with the statistics of the global batch
            net = parallel_lib.sync_batchnorm(net)
        self.model = net
        self.optimizer, self.trainable, self.ddp, self._compiled = None, {}, None, None

    def _apply_phase(self, phase: Phase, index: int) -> dict:
        net, fidelity = self.model, self.config.recipe.fidelity
        self.trainable = recipe.trainable_modules(net, self.spec, self.entry, phase)
        recipe.freeze_all_but(net, self.trainable)
        groups = recipe.param_groups(net, self.entry, phase)
        self.optimizer = recipe.torch_optimizer(phase, groups, fidelity)
        if self.world > 1:
            # after requires_grad is set: DDP all-reduces exactly this phase's parameters
            self.ddp = parallel_lib.wrap(net, self.device_)
        return describe_phase(net, self.spec, self.entry, phase, self.trainable, groups, fidelity)

    def _set_learning_rate(self, learning_rate: float) -> None:
        recipe.set_learning_rate(self.optimizer, learning_rate)

    def _fit_epoch(self, phase: Phase, global_epoch: int) -> dict:
        net = self.model
        loader = self.train_loaders[phase.augment]
        data.set_epoch(loader, global_epoch)
        criterion = nn.CrossEntropyLoss(label_smoothing=phase.label_smoothing)
        recipe.set_train_modes(net, self.trainable, phase.bn)  # model.train() resets BN modes

        def on_loss(loss: float) -> None:
            self._step += 1
            self.log_scalars(self._step, {"batch/train_loss": loss})

        stats = train.fit_epoch(self.ddp or net, loader, self.optimizer, criterion,
                                self.device_, self.norm, on_loss,
                                precision=self.config.train.precision, desc=self.pass_name)
        self._computed["train"].add(stats.pop("compute_dtype"))
        if self.world > 1:  # the epoch's loss and top-1 over every rank's images
            loss, correct, seen = parallel_lib.sum_over_ranks(
                [stats["loss"] * stats["images"], stats["top1"] * stats["images"], stats["images"]],
                self.device_)
            stats.update(loss=loss / max(seen, 1), top1=correct / max(seen, 1), images=int(seen))
        return stats

    def _run_eval(self, subset: str, fn=None) -> np.ndarray:
        out, dtype = train.predict_batches(self.model, self.eval_loaders[subset], self.device_,
                                           self.norm, fn, precision=self.config.train.precision,
                                           desc=self.pass_name)
        if dtype is not None:
            self._computed["eval"].add(dtype)
        if out is None:
            width = self.num_classes if fn is None else self.spec.feature_dim
            out = np.zeros((0, width), np.float32)
        if self.world > 1:  # each rank predicted its share: the whole split, once, on every rank
            out = parallel_lib.gather_in_order(out, len(self.split.subset(subset)), self.device_)
        return out

    def _predict(self, subset: str) -> np.ndarray:
        return self._run_eval(subset)

    def _extract_features(self, subset: str) -> np.ndarray:
        return self._run_eval(subset, lambda net, images: model_lib.forward_features(
            net, self.entry, images))

    def _precision_used(self) -> dict:
        labels = {"bfloat16": "bf16", "float32": "fp32"}
        used = {path: "+".join(sorted(labels.get(d, d) for d in dtypes if d)) or None
                for path, dtypes in self._computed.items()}
        how = (f"torch.autocast({self.device_.type!r}, torch.bfloat16) around forward and loss; "
               f"fp32 weights, optimizer state and BatchNorm statistics"
               if self.config.train.precision == "bf16" else "fp32")
        if self.config.train.precision == "bf16" and \
                self.config.recipe.fidelity.aligned("head_dtype"):
            how += "; the head in fp32 outside autocast (fidelity head_dtype = aligned)"
        return {**used, "how": how}

    # -- checkpoints -----------------------------------------------------
    def _optimizer_signature(self) -> list:
        """What must match for a saved optimizer state to be loaded into the current one."""
        if self.optimizer is None:
            return []
        return [type(self.optimizer).__name__, self.trainable_names()]

    def _state(self) -> dict:
        """What a checkpoint holds of the training state: the model's and the optimizer's
        state dicts (live: ``_hold`` copies them)."""
        return {"model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def _save(self, path: Path) -> Path:
        return self._save_held(self._state(), path)

    def _hold(self) -> dict:
        """``_state`` copied to host memory (a copy on the accelerator would double the
        model's device memory)."""
        return _host_copy(self._state())

    def _save_held(self, held: dict, path: Path) -> Path:
        file = weights_lib.checkpoint_file(path, self.checkpoint_suffix)
        if self.rank == 0:
            weights_lib.save_checkpoint(file, {
                **held,
                "optimizer_signature": self._optimizer_signature(),
                "classes": list(self.split.classes) if self.split is not None else [],
                "num_classes": self.num_classes,
                "model_name": self.spec.name,
            })
        if self.world > 1:
            parallel_lib.barrier()  # no rank reads it before rank 0 has written it
        return file

    def _restore(self, path: Path) -> None:
        net = self.model
        file = weights_lib.checkpoint_file(path, self.checkpoint_suffix)
        ckpt = weights_lib.load_checkpoint(file)
        # the aligned model's BatchNorm gamma is a constant 1: a state holding another is refused
        weights_lib.check_fixed_gammas(net, weights_lib.model_state(ckpt), f"checkpoint {str(file)!r}")
        try:
            net.load_state_dict(weights_lib.model_state(ckpt))
        except RuntimeError as err:
            raise BackendError(f"checkpoint {str(file)!r} does not match the model: "
                               f"{str(err).splitlines()[0]}") from None
        # The optimizer state (momentum buffers, Adam moments) belongs to the phase that
        # saved it; a checkpoint of another phase (best-on-val from phase 1) restores weights only.
        if (self.optimizer is not None and ckpt.get("optimizer")
                and ckpt.get("optimizer_signature") == self._optimizer_signature()):
            self.optimizer.load_state_dict(ckpt["optimizer"])

    def _trainable_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def _snapshot(self, block: str) -> dict[str, np.ndarray]:
        net = self.model
        modules = model_lib.block_modules(net, self.entry, block)
        return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()
                if model_lib.in_modules(k, modules)}

    # -- reporting -------------------------------------------------------
    def _throughput(self, batch_size: int, precision: str, steps: int, warmup: int,
                    kinds: tuple[str, ...], compile: bool) -> dict:
        net, phase = self.model, self.phase
        if self.world > 1:  # the DDP step (all-reduce included) on this rank's share of the batch
            batch_size = max(1, batch_size // self.world)
        if compile and self._compiled is None:
            # compiled lazily: the first timed step of each kind pays the compilation
            self._compiled = torch.compile(self.ddp or net)
        result = throughput_lib.measure_throughput(
            self.ddp or net, self.optimizer,
            lambda: recipe.set_train_modes(net, self.trainable, phase.bn),
            device=self.device_, num_classes=self.num_classes, image_size=self.image_size,
            batch_size=batch_size, precision=precision, steps=steps, warmup=warmup,
            seed=self.config.train.seed, kinds=kinds, compiled=self._compiled if compile else None)
        if self.world > 1:  # every rank steps in lockstep: img/s of the global batch
            for kind in kinds:
                for key in ("images_per_second", "images_per_second_p10", "images_per_second_p90"):
                    result[kind][key] *= self.world
            result["measured"] = (f"a DDP step of {batch_size} image(s) per device on rank "
                                  f"{self.rank}, img/s x {self.world} devices")
        return result

    def is_out_of_memory(self, error: BaseException) -> bool:
        return throughput_lib.is_out_of_memory(error)

    def release_memory(self) -> None:
        throughput_lib.release_memory()

    def out_of_memory_error(self, message: str) -> BaseException:
        return throughput_lib.OUT_OF_MEMORY(message)

    def forward_flops(self) -> int | None:
        self._require("built", "forward_flops()")
        return throughput_lib.forward_flops(self.model, self.image_size, self.device_)

    def _time_input_pipeline(self, augment: bool) -> dict:
        """The training DataLoader (its persistent workers, pinned memory) up to the normalised
        batch on the device, as ``recipe.train_one_epoch`` reads it, without the model: epoch 1
        starts the workers, epoch 2 is timed."""
        loader = self.train_loaders[augment]
        norm = get_normalisation(self.preprocessing_name())
        for epoch in (1, 2):
            data.set_epoch(loader, epoch)
            images_seen, t0 = 0, time.perf_counter()
            for images, labels in loader:
                data.normalise(images.to(self.device_, non_blocking=True), norm)
                labels.to(self.device_, non_blocking=True)
                images_seen += len(labels)
            throughput_lib.synchronize(self.device_)
            seconds = time.perf_counter() - t0
        return {"images": images_seen, "seconds": seconds,
                "images_per_second": images_seen / seconds if seconds > 0 else None,
                "pipeline": data.describe_loader(loader)}

    def _bare_train_loop(self, batch_size: int, steps: int):
        """The harness-overhead baseline: the same model, optimizer and batch layout in a
        plain ``for`` loop, timed once around all steps."""
        net, optimizer = self.model, self.optimizer
        g = torch.Generator().manual_seed(0)
        size = self.image_size
        x = torch.randn(batch_size, 3, size, size, generator=g).to(self.device_)
        x = x.contiguous(memory_format=torch.channels_last)  # the harness's batch layout
        y = torch.randint(0, self.num_classes, (batch_size,), generator=g).to(self.device_)
        loss_fn = nn.CrossEntropyLoss()

        def run() -> float:
            recipe.set_train_modes(net, self.trainable, self.phase.bn)
            t0 = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad()
                loss_fn(net(x), y).backward()
                optimizer.step()
            if x.is_cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t0
        return run

    def _export(self, fmt: str, directory: Path, golden: np.ndarray):
        return export_lib.export(self.model, fmt, directory, golden)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if self.rank == 0:  # one TensorBoard log per run
            self.writer.add_scalars(step, scalars)

    def _parallel_details(self) -> dict:
        return {"world_size": self.world, "process_group": "nccl" if self.device_.type == "cuda" else "gloo",
                "launcher": "torchrun (python -m torch.distributed.run)",
                "sampler": "DistributedSampler + set_epoch (eval: gathered, padding dropped)",
                "gradients": "averaged by DDP's all-reduce during backward()",
                "batchnorm": ("SyncBatchNorm: statistics of the global batch"
                              if self.config.train.sync_bn else
                              "per device (rank 0's running statistics broadcast each forward)")}

    def model_summary(self) -> str:
        return model_lib.summary(self.model) if self.model is not None else ""

    def close(self) -> None:
        self.writer.close()
        self.model = self.optimizer = self.ddp = self._compiled = None
        if self.world > 1:
            parallel_lib.destroy()
        if self.device_.type == "cuda":
            torch.cuda.empty_cache()


def _host_copy(state):
    """``state`` (a state dict: nested dicts and lists of tensors and numbers) with every
    tensor copied to host memory."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _host_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_host_copy(v) for v in state)
    return copy.deepcopy(state)
