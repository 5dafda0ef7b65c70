"""K solo MLPs as one StackedModel, and back: `stack_models`, `write_back`, `read_from`, `keep`.

All members' parameters live in one member-major buffer `flat` (K, P), each stacked parameter a
leaf view of its columns (a Linear weight is (K, out, in)), and their gradients in `flat_grad`,
so an optimizer updates every parameter of every member with a handful of whole-buffer kernels
(HFTA, Wang et al. MLSys 2021). Stacked names are the members' names: `hidden1.linear.weight`
of the stack holds every member's `hidden1.linear.weight`, and state-dict keys match one to one.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from dnnlab.errors import UserError
from dnnlab.models import weights
from dnnlab.engine.stacked.layers import (
    StackedBatchNorm, StackedDropout, StackedELU, StackedFlatten, StackedLayerNorm, StackedLeakyReLU, StackedLinear,
    StackedPReLU, StackedRReLU,
)

# A stacked parameter spans K separate column blocks of `flat`, so it is not dense and its gradient
# (a view of `flat_grad`) cannot follow torch's gradient layout contract: expected, and harmless.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


class CannotStack(UserError):
    """Something in these members has no stacked form yet; the message (one line) names it. Run the job solo."""


SUPPORTED = "stacked sweeps take model=mlp: Linear, BatchNorm1d, LayerNorm, Dropout, AlphaDropout and dnnlab's activations"

# Elementwise activations: one shared module acts on the whole stack when the members' settings are equal.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.RReLU, nn.Identity,
)
# Those whose settings may differ per member, and how they stack then.
PER_MEMBER: dict[type, Callable[[list[nn.Module], torch.Tensor], nn.Module]] = {
    nn.LeakyReLU: lambda ms, like: StackedLeakyReLU([m.negative_slope for m in ms], like),
    nn.ELU: lambda ms, like: StackedELU([m.alpha for m in ms], like),
    nn.RReLU: lambda ms, like: StackedRReLU([m.lower for m in ms], [m.upper for m in ms], like),
}


@dataclass(frozen=True)
class Slot:
    """Where one member parameter lives in `flat`: columns [offset, offset + numel) of each member's row."""

    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]  # the member's shape (without K)


def stack(path: str, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """The members' tensors stacked on a new first dimension (detached copies), or None when they have none."""
    same(path, "parameter shapes", [None if t is None else tuple(t.shape) for t in tensors])
    return None if tensors[0] is None else torch.stack([t.detach() for t in tensors])


def same(path: str, what: str, values: Sequence[object]) -> object:
    """The members' common value of a setting that has to be equal across the stack."""
    if any(v != values[0] for v in values):
        raise CannotStack(f"{path}: the members' {what} differ ({', '.join(map(str, values))}); they must be equal to stack")
    return values[0]


Stacker = Callable[[str, list, torch.Tensor], Optional[nn.Module]]


def stack_sequential(path: str, modules: list[nn.Sequential], like: torch.Tensor) -> nn.Module:
    same(path, "sub-layers", [tuple(m._modules) for m in modules])
    return nn.Sequential(OrderedDict(
        (name, stack_layer(f"{path}.{name}", [m._modules[name] for m in modules], like)) for name in modules[0]._modules
    ))


def stack_flatten(path: str, modules: list[nn.Flatten], like: torch.Tensor) -> nn.Module | None:
    return StackedFlatten() if all((m.start_dim, m.end_dim) == (1, -1) for m in modules) else None


def stack_linear(path: str, modules: list[nn.Linear], like: torch.Tensor) -> nn.Module:
    return StackedLinear(stack(path, [m.weight for m in modules]), stack(path, [m.bias for m in modules]))


def stack_batch_norm(path: str, modules: list[nn.BatchNorm1d], like: torch.Tensor) -> nn.Module:
    momentum = same(path, "batch-norm momentum", [m.momentum for m in modules])
    if momentum is None:
        raise CannotStack(f"{path}: batch norm with momentum=None (a cumulative average) has no stacked form yet")
    same(path, "track_running_stats", [m.track_running_stats for m in modules])
    tensors = {name: stack(path, [getattr(m, name) for m in modules])
               for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return StackedBatchNorm(**tensors, eps=same(path, "batch-norm eps", [m.eps for m in modules]), momentum=momentum)


def stack_layer_norm(path: str, modules: list[nn.LayerNorm], like: torch.Tensor) -> nn.Module | None:
    shape = same(path, "normalized shapes", [m.normalized_shape for m in modules])
    if len(shape) != 1:
        return None
    return StackedLayerNorm(stack(path, [m.weight for m in modules]), stack(path, [m.bias for m in modules]),
                            shape[0], same(path, "layer-norm eps", [m.eps for m in modules]))


def stack_dropout(path: str, modules: list[nn.Dropout], like: torch.Tensor) -> nn.Module:
    return StackedDropout([m.p for m in modules], alpha=isinstance(modules[0], nn.AlphaDropout), like=like)


def stack_prelu(path: str, modules: list[nn.PReLU], like: torch.Tensor) -> nn.Module:
    return StackedPReLU(stack(path, [m.weight for m in modules]))


def stack_elementwise(path: str, modules: list[nn.Module], like: torch.Tensor) -> nn.Module:
    """One copy of the activation when the members' settings are equal, else its per-member form."""
    kind, settings = type(modules[0]), [m.extra_repr() for m in modules]
    if all(s == settings[0] for s in settings):
        return copy.deepcopy(modules[0])
    if kind not in PER_MEMBER:
        same(path, f"{kind.__name__} settings", settings)  # they differ: raises
    return PER_MEMBER[kind](modules, like)


STACKERS: dict[type, Stacker] = {
    nn.Sequential: stack_sequential, nn.Flatten: stack_flatten, nn.Linear: stack_linear,
    nn.BatchNorm1d: stack_batch_norm, nn.LayerNorm: stack_layer_norm, nn.Dropout: stack_dropout,
    nn.AlphaDropout: stack_dropout, nn.PReLU: stack_prelu, **{kind: stack_elementwise for kind in ELEMENTWISE},
}


def stack_layer(path: str, modules: list[nn.Module], like: torch.Tensor) -> nn.Module:
    """The stacked form of the members' layer at `path` (all of one type), or CannotStack naming it.

    `like`: a member parameter (the device and dtype of per-member settings).
    """
    same(path, "layer types", [type(m).__name__ for m in modules])
    kind = type(modules[0])
    layer = STACKERS[kind](path, modules, like) if kind in STACKERS else None
    if layer is None:
        detail = f"{kind.__name__}({modules[0].extra_repr()})" if kind in STACKERS else kind.__name__
        raise CannotStack(f"the model's layer {path} ({detail}) has no stacked form yet ({SUPPORTED})")
    return layer


class StackedModel(nn.Module):
    """K members of one MLP architecture: forward (K, B, *in) or a shared (B, *in) → logits (K, B, classes).

    Build it with `stack_models`. It lives on its members' device and dtype: stack the members after
    moving them (`.to()` would replace the parameters that view `flat`). `zero_grad` zeroes
    `flat_grad` in place, since the gradients must stay views of it.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], members: int):
        super().__init__()
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.members = members
        self.in_features = next(m.in_features for m in self.modules() if isinstance(m, StackedLinear))
        self.flatten_parameters()

    def flatten_parameters(self) -> None:
        """Move every parameter into one (K, P) buffer `flat` (gradients into `flat_grad`); parameters become views of it."""
        named = list(self.named_parameters())
        self.member_names = [name for name, _ in named]  # member parameter names, in stacked_parameters() order
        self.flat = torch.cat([p.detach().reshape(self.members, -1) for _, p in named], dim=1)
        self.flat_grad = torch.zeros_like(self.flat)
        self.layout: list[Slot] = []
        offset = 0
        for name, p in named:
            numel = math.prod(p.shape[1:])
            owner, attr = (self.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
            view = nn.Parameter(self.flat[:, offset:offset + numel].view(p.shape))
            view.grad = self.flat_grad[:, offset:offset + numel].view(p.shape)
            owner._parameters[attr] = view
            self.layout.append(Slot(name, offset, numel, tuple(p.shape[1:])))
            offset += numel
        self.params = list(self.parameters())
        self.grad_views = [p.grad for p in self.params]

    def stacked_parameters(self) -> list[nn.Parameter]:
        """The stacked parameters, in a fixed order: the i-th holds every member's `member_names[i]`."""
        return list(self.params)

    def weight_tensors(self, hidden_only: bool = False) -> list[torch.Tensor]:
        """Stacked weights of every linear layer (not biases, not norm parameters), as dnnlab.models.weights."""
        return weights(self, hidden_only, kinds=(StackedLinear,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = x.dim() >= 3 and x.shape[0] == self.members and math.prod(x.shape[2:]) == self.in_features
        if not stacked:
            if math.prod(x.shape[1:]) != self.in_features:
                raise ValueError(f"StackedModel takes (K={self.members}, B, *in) or (B, *in) with {self.in_features} "
                                 f"input features per sample; got shape {tuple(x.shape)}")
            x = x.unsqueeze(0).expand(self.members, *x.shape)  # one batch for all members, not copied
        for layer in self.children():
            x = layer(x)
        return x

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every member's gradients in place (they stay views of `flat_grad`; `set_to_none` is ignored)."""
        self.flat_grad.zero_()
        self.attach_grads()

    def attach_grads(self) -> None:
        """Make each parameter's .grad its view of `flat_grad` again, keeping its values (after someone replaced it)."""
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not view:
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view

    # ------------------------------------------------------------------ members
    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy every stacked parameter and buffer into the members' own modules, in place."""
        self.check_count(models)
        stacked = self.state_dict()
        for k, model in enumerate(models):
            own = model.state_dict()
            for name, value in stacked.items():
                own[name].copy_(value[k])

    @torch.no_grad()
    def read_from(self, models: Sequence[nn.Module]) -> None:
        """Copy the members' parameters and buffers into the stack (after a member was restored from a checkpoint)."""
        self.check_count(models)
        stacked = self.state_dict()
        for k, model in enumerate(models):
            own = model.state_dict()
            for name, value in stacked.items():
                value[k].copy_(own[name])

    @torch.no_grad()
    def keep(self, indices: Sequence[int]) -> None:
        """Shrink the stack to the members at `indices` (in that order); the others leave it."""
        if not indices or len(set(indices)) != len(indices) or not all(0 <= i < self.members for i in indices):
            raise ValueError(f"keep() takes distinct member indices in 0..{self.members - 1}; got {list(indices)}")
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.flat.device)
        for module in self.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = nn.Parameter(p.detach().index_select(0, index))
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.index_select(0, index)
        self.members = len(indices)
        self.flatten_parameters()

    def check_count(self, members: Sequence[object]) -> None:
        if len(members) != self.members:
            raise ValueError(f"this stack has {self.members} members; got {len(members)}")


def stack_models(models: Sequence[nn.Module]) -> StackedModel:
    """One StackedModel of dnnlab MLPs (`dnnlab.models.mlp`) of one architecture; their values may differ.

    Raises CannotStack, naming the layer or setting, for anything without a stacked form.
    """
    if not models:
        raise ValueError("stack_models needs at least one member")
    first = models[0]
    same("model", "architectures", [type(m).__name__ for m in models])
    if type(first) is not nn.Sequential:
        raise CannotStack(f"the model ({type(first).__name__}) has no stacked form yet ({SUPPORTED})")
    params = [p for m in models for p in m.parameters()]
    if not params:
        raise CannotStack("the model has no parameters to train")
    kinds = sorted({f"{p.dtype} on {p.device}" for p in params})
    if len(kinds) > 1:
        raise CannotStack(f"the members' parameters are of several dtypes or devices ({', '.join(kinds)}); a stack has one")
    if not all(p.requires_grad for p in params):
        raise CannotStack("the model has frozen layers (model.freeze); a stack trains every parameter")
    same("model", "layers", [tuple(m._modules) for m in models])
    layers = OrderedDict((name, stack_layer(name, [m._modules[name] for m in models], params[0]))
                         for name in first._modules)
    stacked = StackedModel(layers, len(models)).train(first.training)
    if set(stacked.state_dict()) != set(first.state_dict()):  # write_back maps keys one to one
        raise CannotStack(f"the model's state has no stacked form ({sorted(set(first.state_dict()) ^ set(stacked.state_dict()))})")
    return stacked
