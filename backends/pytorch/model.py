"""Build torchvision models; map canonical blocks to modules.

PyTorch idiom: a model is a tree of ``nn.Module`` objects and the canonical
blocks of ``common.models`` are *top-level child modules* of the torchvision
model (``model.layer4``, ``model.Mixed_7c``), or module paths deeper in the
tree where torchvision keeps the layers of several blocks in one
``Sequential`` (``features.17``). ``recipe.build_model`` replaces the head
by plain attribute assignment (``model.fc = nn.Linear(...)``), as in the
torchvision fine-tuning tutorial.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception, vgg

from backends.base import BackendError, ModelEntry
from common.models import EFFICIENTNET_LITE0, HEAD, ModelSpec

# torchvision's Inception3 aux head (avg_pool 5/3, then a 5x5 VALID conv) needs Mixed_6e
# at 17x17, i.e. the full 299 px input; slim's aux head shrinks its kernel for small inputs
# (_reduced_kernel_size_for_small_input) and runs at any size.
AUX_MIN_SIZE = 299


# ---------------------------------------------------------------- alignment
# torchvision's Inception3 differs from Keras' and slim's InceptionV3 in two places
# (catalog.INCEPTION_ALIGNMENT; measured by `bench parity`, docs/differences.md). For
# suite-made weights the suite aligns torch, the odd one out, in
# torchvision's own extension point: Inception3(inception_blocks=[...]) subclasses.

class InceptionA(inception.InceptionA):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # torchvision: count_include_pad=True (zeros of the padding counted in the mean);
        # Keras AveragePooling2D(padding="same") and slim avg_pool2d SAME divide by the
        # number of real pixels under the window.
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [branch1x1, branch5x5, branch3x3dbl, self.branch_pool(branch_pool)]


class InceptionC(inception.InceptionC):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for i in range(1, 6):
            branch7x7dbl = getattr(self, f"branch7x7dbl_{i}")(branch7x7dbl)
        # TF SAME pooling excludes the padding (see InceptionA)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [branch1x1, branch7x7, branch7x7dbl, self.branch_pool(branch_pool)]


class InceptionE(inception.InceptionE):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl),
                                  self.branch3x3dbl_3b(branch3x3dbl)], 1)
        # TF SAME pooling excludes the padding (see InceptionA)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [branch1x1, branch3x3, branch3x3dbl, self.branch_pool(branch_pool)]


ALIGNED_INCEPTION_BLOCKS = [inception.BasicConv2d, InceptionA, inception.InceptionB, InceptionC,
                            inception.InceptionD, InceptionE, inception.InceptionAux]


def remove_batchnorm_scale(model: nn.Module) -> None:
    """Every BatchNorm's gamma becomes a constant buffer of ones (not a parameter).

    Keras and slim build InceptionV3's BatchNorm with ``scale=False`` (beta only);
    torchvision's is affine. With gamma fixed at 1 the three are the same model in
    training as in inference, their trainable counts match, and the weights convert
    exactly; the state_dict key (``bn.weight``) stays, so checkpoints keep their layout.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and isinstance(module.weight,
                                                                               nn.Parameter):
            ones = torch.ones_like(module.weight.detach())
            del module.weight
            module.register_buffer("weight", ones)


def fixed_gamma_keys(model: nn.Module) -> list[str]:
    """state_dict keys of BatchNorm gammas that ``remove_batchnorm_scale`` fixed at 1."""
    params = {name for name, _ in model.named_parameters()}
    return [f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
            and f"{name}.weight" not in params]


def torchvision_model(spec: ModelSpec, entry: ModelEntry, num_classes: int,
                      aux_logits: bool = False, image_size: int | None = None,
                      aligned: bool = True, init_weights: bool = True,
                      dropout: float = 0.0) -> nn.Module:
    """The torchvision model of ``entry`` with randomly initialised weights, its ImageNet
    classifier still in place (``recipe.build_model`` replaces it with the new head).

    ``aligned`` (suite-made weights): the changes of ``entry.alignment`` that make the
    model compute what Keras and slim compute; ``False`` is torchvision's own model
    (``--weights imagenet``, and ``bench parity --alignment native``). ``init_weights=False``
    skips torchvision's truncated-normal initialisation (weights about to be overwritten).
    ``aux_logits``: Inception's aux head, with ``num_classes`` outputs, initialised as slim's.
    ``dropout`` > 0: Inception3's own ``dropout`` attribute becomes ``nn.Dropout(dropout)``
    on the pooled features (active in ``train()`` only); other models get it in the head.
    """
    constructor = entry.resolve_constructor()
    if entry.aux_head:
        if aux_logits and image_size is not None and image_size < AUX_MIN_SIZE:
            raise BackendError(f"torchvision {spec.name} with aux_logits needs image_size >= "
                               f"{AUX_MIN_SIZE} px (got {image_size}); use a larger --image-size "
                               f"or turn aux_logits off")
        # transform_input=False: we feed [-1, 1] ('inception' normalisation, as Keras and
        # slim do); torchvision's transform_input=True maps ImageNet mean/std input to that
        # same [-1, 1] range inside forward(), so the two are the same computation.
        blocks = ALIGNED_INCEPTION_BLOCKS if aligned and entry.alignment else None
        model = constructor(weights=None, aux_logits=aux_logits, transform_input=False,
                            init_weights=init_weights, inception_blocks=blocks)
        if aligned and entry.alignment:
            remove_batchnorm_scale(model)
        # torchvision puts Dropout(0.5) before fc; the suite's head is the same in every
        # backend: no dropout unless the recipe asks for it (Keras: a Dropout layer, slim:
        # slim.dropout(keep_prob = 1 - rate)), at the recipe's rate
        model.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        if aux_logits:
            model.AuxLogits.fc = nn.Linear(model.AuxLogits.fc.in_features, num_classes)
            init_aux_head_like_slim(model.AuxLogits)
        return model
    if entry.alignment:  # the suite's own module: built aligned or in torchvision's idiom
        return constructor(weights=None, aligned=aligned)
    return constructor(weights=None)


def vgg16(weights: None = None) -> nn.Module:
    """torchvision's VGG16 as the suite's model: ``features``, the five convolution blocks
    (``torchvision.models.vgg.make_layers(cfgs["D"])``, initialised as torchvision's ``VGG``
    does), then the global average pool of block5 (512-d, as Keras ``VGG16(include_top=False,
    pooling="avg")``) and a ``classifier`` that ``recipe.build_model`` replaces with the
    suite's head.

    torchvision's ``VGG`` module would also build fc6 and fc7 (``classifier.0``, ``.3``:
    25088x4096 and 4096x4096 behind a 7x7 adaptive pool, 120M parameters) that the suite's
    model does not have. The module names are torchvision's (``features.0.weight``), so its
    ImageNet ``state_dict`` loads as it is, its classifier left out with the head.
    """
    if weights is not None:
        raise BackendError("vgg16() builds random weights; the backend restores weights itself")
    features = vgg.make_layers(vgg.cfgs["D"])
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's VGG.__init__
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return nn.Sequential(OrderedDict(features=features, avgpool=nn.AdaptiveAvgPool2d(1),
                                     flatten=nn.Flatten(1), classifier=nn.Linear(512, 1000)))


# ------------------------------------------------------------ EfficientNet-Lite0

class TFSamePad(nn.Module):
    """TensorFlow's ``padding="SAME"`` as an explicit zero pad before a VALID convolution.

    TF pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` pixels along an axis of length ``n``,
    the smaller half *before* and the larger half *after*: at stride 2 with an even input
    and k = 3, no pixel before and one after (``nn.ZeroPad2d((0, 1, 0, 1))``), where
    ``nn.Conv2d(padding=1)`` pads one on each side and samples other pixels. Computed from
    the input's size, so the model runs at any image size; at stride 1 it is ``k // 2``
    on each side, as ``padding=k // 2``.
    """

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    @staticmethod
    def amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self.amounts(x.shape[-2], self.kernel, self.stride)
        left, right = self.amounts(x.shape[-1], self.kernel, self.stride)
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: bool = True, aligned: bool = True, eps: float = 1e-3) -> nn.Sequential:
    """``pad -> conv -> bn -> ReLU6`` as one ``Sequential`` (torchvision's
    ``Conv2dNormActivation`` idea, with named children: ``m.conv``, ``m.bn``).

    ``aligned`` (the suite's model, what Keras and slim compute): TensorFlow's SAME padding
    (``TFSamePad``) and the BatchNorm epsilon ``eps``; ``False`` is the torchvision idiom,
    ``padding=kernel // 2`` on both sides and torch's default epsilon 1e-5 (``bench parity
    --alignment native`` measures the difference, docs/differences.md)."""
    layers = OrderedDict()
    if aligned and stride > 1:
        layers["pad"] = TFSamePad(kernel, stride)
    padding = 0 if aligned and stride > 1 else kernel // 2
    layers["conv"] = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
    layers["bn"] = nn.BatchNorm2d(cout, eps=eps if aligned else 1e-5)
    if act:
        layers["act"] = nn.ReLU6(inplace=True)
    return nn.Sequential(layers)


class MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual block: 1x1 ``expand`` (when the ratio is not
    1), ``dwconv`` (depthwise k x k, the stage's stride), 1x1 ``project`` without an
    activation, and the input added when the shapes allow (stride 1, same width). No
    squeeze-excitation (the Lite variants drop it); drop-connect is a training
    regulariser the suite does not use (an identity in eval)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int,
                 aligned: bool = True, eps: float = 1e-3):
        super().__init__()
        mid = cin * expand
        self.expand = (conv_bn_act(cin, mid, 1, aligned=aligned, eps=eps) if expand != 1
                       else nn.Identity())
        self.dwconv = conv_bn_act(mid, mid, kernel, stride, groups=mid, aligned=aligned, eps=eps)
        self.project = conv_bn_act(mid, cout, 1, act=False, aligned=aligned, eps=eps)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dwconv(self.expand(x)))
        return x + y if self.residual else y


def efficientnet_lite0(weights: None = None, aligned: bool = True) -> nn.Module:
    """EfficientNet-Lite0 in torchvision style, from ``common.models.EFFICIENTNET_LITE0``'s
    stage table: one ``Sequential`` whose children are the canonical blocks (``stem``,
    ``block1`` .. ``block7`` of ``MBConv`` modules, ``top``), then the global average pool
    and a ``classifier`` that ``recipe.build_model`` replaces with the suite's head.

    The suite's own module rather than timm's ``tf_efficientnet_lite0``: timm builds the
    same network (its ``Conv2dSame`` is ``TFSamePad``) but would be a dependency of every
    torch install for one model, and its module names (``blocks.1.0.conv_pw``) are not the
    canonical blocks. Initialised as torchvision's EfficientNet (kaiming-normal fan-out
    convolutions, BatchNorm 1 / 0).
    """
    if weights is not None:
        raise BackendError("efficientnet_lite0() builds random weights; the backend restores "
                           "weights itself")
    spec = EFFICIENTNET_LITE0
    eps = spec.bn_epsilon
    children = OrderedDict(stem=conv_bn_act(3, spec.stem_channels, 3, 2, aligned=aligned, eps=eps))
    cin = spec.stem_channels
    for s, stage in enumerate(spec.stages, 1):
        blocks = []
        for r in range(stage.repeats):
            blocks.append(MBConv(cin, stage.channels, stage.kernel, stage.stride if r == 0 else 1,
                                 stage.expand, aligned=aligned, eps=eps))
            cin = stage.channels
        children[f"block{s}"] = nn.Sequential(*blocks)
    children["top"] = conv_bn_act(cin, spec.top_channels, 1, aligned=aligned, eps=eps)
    children.update(avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1),
                    classifier=nn.Linear(spec.top_channels, 1000))
    model = nn.Sequential(children)
    for m in model.modules():  # torchvision's EfficientNet.__init__
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_range = 1.0 / math.sqrt(m.out_features)
            nn.init.uniform_(m.weight, -init_range, init_range)
            nn.init.zeros_(m.bias)
    return model


def _truncated_normal_(weight: torch.Tensor, stddev: float) -> None:
    """TensorFlow's ``truncated_normal``: N(0, stddev) redrawn beyond 2 stddev."""
    nn.init.trunc_normal_(weight, mean=0.0, std=stddev, a=-2 * stddev, b=2 * stddev)


def init_aux_head_like_slim(aux: nn.Module) -> None:
    """Initialise torchvision's ``InceptionAux`` as slim initialises ``InceptionV3/AuxLogits``.

    slim (``tf_slim.nets.inception_v3`` in ``inception_v3_arg_scope``): the 1x1 conv takes
    the arg_scope's ``variance_scaling_initializer()`` (truncated normal, stddev
    ``sqrt(1.3 * 2 / fan_in)``), the 5x5 conv ``truncated_normal(0.01)``, the logits
    ``truncated_normal(0.001)`` with zero biases. torchvision differs: its ``stddev=0.01``
    sits on the ``BasicConv2d`` wrapper, which the init loop never reads (the 5x5 conv
    gets 0.1), it truncates at +-2 absolute rather than 2 stddev, and the new ``fc`` would
    keep ``nn.Linear``'s uniform default. BatchNorm stays gamma 1, beta 0 (slim: beta 0).
    """
    conv0 = aux.conv0.conv
    fan_in = conv0.in_channels * math.prod(conv0.kernel_size)
    with torch.no_grad():
        _truncated_normal_(conv0.weight, math.sqrt(1.3 * 2.0 / fan_in))
        _truncated_normal_(aux.conv1.conv.weight, 0.01)
        _truncated_normal_(aux.fc.weight, 0.001)
        nn.init.zeros_(aux.fc.bias)


def head_name(entry: ModelEntry) -> str:
    """The attribute of the classifier the suite replaces (``fc`` for torchvision's
    Inception and ResNets)."""
    return entry.head[0]


def head_in_features(head: nn.Module) -> int:
    """Input width of a torchvision classifier: a Linear, or a Sequential ending in one."""
    if isinstance(head, nn.Linear):
        return head.in_features
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[0].in_features


class Float32Head:
    """The new head in float32 under ``torch.autocast`` (``fidelity.head_dtype = "aligned"``,
    docs/design.md): its forward runs with autocast off on the features cast to float32, as
    Keras computes a ``dtype="float32"`` Dense under ``mixed_bfloat16``; natively autocast runs
    the head in bf16 like the backbone. Without autocast (fp32) it is the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class Float32Linear(Float32Head, nn.Linear):
    """``nn.Linear`` in float32 under autocast."""


class Float32Sequential(Float32Head, nn.Sequential):
    """``nn.Sequential`` in float32 under autocast."""


def in_float32(head: nn.Module) -> nn.Module:
    """``head`` (``recipe.make_head``'s ``nn.Linear`` or ``nn.Sequential``) made a
    ``Float32Head`` in place: the same object, parameters, initial draws and ``state_dict``
    keys, its class swapped as ``torch.nn.utils.parametrize`` swaps a module's."""
    head.__class__ = {nn.Linear: Float32Linear, nn.Sequential: Float32Sequential}[type(head)]
    return head


def block_modules(model: nn.Module, entry: ModelEntry, block: str) -> dict[str, nn.Module]:
    """Modules of canonical ``block`` (``"head"`` included) that exist in ``model``, keyed
    by module path: top-level children (``layer4``, ``Mixed_7c``) or modules deeper in the
    tree (``features.17``, where torchvision keeps a block's layers in one ``Sequential``).

    ``AuxLogits`` is ``None`` when the aux head is off, so it is left out.
    """
    modules = {}
    for name in entry.native(block):
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:  # None (AuxLogits without the aux head) is not a module
            continue
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


def in_modules(name: str, paths) -> bool:
    """``name`` (a module path or state_dict key) is one of the module ``paths`` or below one."""
    return any(name == p or name.startswith(p + ".") for p in paths)


def module_block(spec: ModelSpec, entry: ModelEntry) -> dict[str, str]:
    """Top-level module name -> canonical block (head included)."""
    out = {}
    for block in (*spec.blocks, HEAD):
        for name in entry.native(block):
            out[name] = block
    return out


def head_prefixes(entry: ModelEntry) -> tuple[str, ...]:
    """State-dict key prefixes a checkpoint never restores: the head and the whole aux head,
    as slim's ``--checkpoint_exclude_scopes=InceptionV3/Logits,InceptionV3/AuxLogits``, so
    the aux head starts from ``init_aux_head_like_slim`` in both backends."""
    return tuple(f"{name}." for name in entry.native(HEAD, aux=True))


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def summary(model: nn.Module) -> str:
    """The module tree followed by a parameter count per top-level module."""
    lines = [repr(model), "", f"{'module':<20} {'params':>12} {'trainable':>12}"]
    for name, child in model.named_children():
        lines.append(f"{name:<20} {count_params(child):>12,} {count_params(child, True):>12,}")
    lines.append(f"{'total':<20} {count_params(model):>12,} {count_params(model, True):>12,}")
    return "\n".join(lines) + "\n"


def forward_features(model: nn.Module, entry: ModelEntry, images: torch.Tensor) -> torch.Tensor:
    """Pooled pre-head features: the input of the head, captured by a forward pre-hook."""
    captured = []
    handle = model.get_submodule(head_name(entry)).register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[0]
