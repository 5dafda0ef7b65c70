"""One optimizer for a StackedModel, built from its members' torch optimizers: `StackedOptimizer.from_members`.

Each update rule (dnnlab.engine.stacked.rules) mirrors torch 2.13's `_single_tensor_*` function on
the whole (K, P) buffer of every member's parameters at once: per-member hyper-parameters are
(K, 1) tensors, so a step is a handful of kernels whatever K is. Scalars torch computes in Python
(1 - β, bias corrections) are computed the same way in double on the host, rounded to the
parameter dtype as torch's kernels round a Python scalar, and sent in one copy (at `refresh` for
the hyper-parameters, at each step for the step-dependent ones). `write_back` / `read_from`
convert the stacked state to and from each member's own optimizer, in torch's format.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.optim.optimizer import _get_scalar_dtype

from dnnlab.engine.stacked.model import CannotStack, StackedModel
from dnnlab.engine.stacked.rules import RULES, Rule

UNSTACKABLE_FLAGS = ("maximize", "differentiable")  # True for either → CannotStack


def only_group(optimizer: torch.optim.Optimizer, model: StackedModel) -> dict[str, Any]:
    """A member's one param group, checked to hold parameters shaped as the model's, in the stacked order."""
    if len(optimizer.param_groups) != 1:
        raise CannotStack(f"the optimizer has {len(optimizer.param_groups)} parameter groups (frozen layers, "
                          f"model.freeze?); a stacked member needs one")
    group = optimizer.param_groups[0]
    if [tuple(p.shape) for p in group["params"]] != [slot.shape for slot in model.layout]:
        raise CannotStack("the optimizer's parameters are not the model's parameters in order (a custom parameter list?)")
    return group


def rule_for(optimizers: Sequence[torch.optim.Optimizer], groups: list[dict[str, Any]]) -> Rule:
    """The update rule of the members' optimizer class, with their common math flags; CannotStack otherwise."""
    names = sorted({type(o).__name__ for o in optimizers})
    if len(names) > 1:
        raise CannotStack(f"the members' optimizers differ ({', '.join(names)}); a stack has one optimizer class")
    rule = next((r for r in RULES if type(optimizers[0]) in r.torch_classes), None)
    if rule is None:
        stackable = ", ".join(c.__name__ for r in RULES for c in r.torch_classes)
        raise CannotStack(f"optimizer {names[0]} has no stacked form yet (stackable: {stackable})")
    for flag in UNSTACKABLE_FLAGS:
        if any(g.get(flag) for g in groups):
            raise CannotStack(f"optimizer {names[0]} with {flag}=True has no stacked form yet")
    settings = {}
    for flag in rule.flags:
        values = [bool(g.get(flag, False)) for g in groups]
        if len(set(values)) > 1:
            raise CannotStack(f"the members' optimizer {flag} settings differ ({', '.join(map(str, values))}); "
                              f"they must be equal to stack")
        settings[flag] = values[0]
    return rule(settings, len(optimizers))


class StackedOptimizer:
    """Steps a StackedModel's (K, P) parameter buffer as K torch optimizers of one class would step their members."""

    def __init__(self, model: StackedModel, rule: Rule, group: dict[str, Any]):
        self.model, self.rule = model, rule
        # where torch keeps a parameter's `step` (and NAdam's `mu_product`): on its device when fused/capturable
        self.fused, self.capturable = bool(group.get("fused")), bool(group.get("capturable"))
        self.state: dict[str, torch.Tensor] = {}
        self.steps = np.zeros(model.members)  # every member's step count, on the host
        self.host = np.zeros((len(rule.hypers), model.members))  # (hyper-parameters, K) doubles
        self.scratch: list[torch.Tensor] = []
        self.const: dict[str, torch.Tensor] = {}

    @classmethod
    def from_members(cls, optimizers: Sequence[torch.optim.Optimizer], model: StackedModel) -> StackedOptimizer:
        """The stacked optimizer of K members' optimizers (one class, one param group each) over `model`."""
        model.check_count(optimizers)
        groups = [only_group(o, model) for o in optimizers]
        stacked = cls(model, rule_for(optimizers, groups), groups[0])
        stacked.read_from(optimizers)
        return stacked

    # ------------------------------------------------------------------ hyper-parameters
    def hypers(self) -> dict[str, np.ndarray]:
        """The members' hyper-parameters by name, each a (K,) array of doubles."""
        return dict(zip(self.rule.hypers, self.host))

    def refresh(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Re-read every member's current hyper-parameters (its schedule changed them); nothing is sent when none changed."""
        host = np.array([self.rule.read(o.param_groups[0]) for o in optimizers], dtype=np.float64).T.reshape(self.host.shape)
        if self.const and np.array_equal(host, self.host):
            return
        self.host = host
        self.const = self.upload(self.rule.constants(self.hypers()))

    def upload(self, values: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Host (K,) doubles → (K, 1) tensors of the parameters' dtype and device, in one copy."""
        if not values:
            return {}
        flat = self.model.flat
        packed = torch.from_numpy(np.stack(list(values.values()))).to(flat.device, flat.dtype, non_blocking=True)
        return dict(zip(values, packed.view(len(values), -1, 1).unbind(0)))

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        self.model.zero_grad()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every member, as its own torch optimizer's `step()` would do it."""
        self.model.attach_grads()
        self.steps += 1
        c = {**self.const, **self.upload(self.rule.per_step(self.hypers(), self.steps))}
        self.rule.update(self, self.model.flat, self.model.flat_grad, c)

    def tensor(self, name: str) -> torch.Tensor:
        """The (K, P) state tensor `name`, created at the rule's initial value the first time."""
        if name not in self.state:
            self.state[name] = torch.full_like(self.model.flat, self.rule.initial.get(name, 0.0))
        return self.state[name]

    def tmp(self, i: int) -> torch.Tensor:
        """Scratch buffer i, (K, P): the update's temporaries without an allocation per step."""
        while len(self.scratch) <= i:
            self.scratch.append(torch.empty_like(self.model.flat))
        return self.scratch[i]

    # ------------------------------------------------------------------ members
    def holds_state(self, k: int) -> bool:
        """Whether member k's torch optimizer holds per-parameter state now (lazy ones: from their first step)."""
        return not (self.rule.lazy and self.steps[k] == 0)

    @torch.no_grad()
    def write_back(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Put the stacked state into each member's optimizer, in torch's format (its state_dict() is a solo one)."""
        self.model.check_count(optimizers)
        dtype = _get_scalar_dtype(is_fused=self.fused)
        for k, optimizer in enumerate(optimizers):
            keys = self.rule.state_keys(k, {name: values[k] for name, values in self.hypers().items()})
            scalars = {"step": float(self.steps[k])} if self.rule.counts_steps else {}
            scalars.update(self.rule.member_scalars(k))
            for p, slot in zip(optimizer.param_groups[0]["params"], self.model.layout):
                if not self.holds_state(k) or not (keys or scalars):
                    optimizer.state.pop(p, None)
                    continue
                device = p.device if self.fused or self.capturable else torch.device("cpu")
                columns = slice(slot.offset, slot.offset + slot.numel)
                optimizer.state[p] = {
                    **{name: torch.tensor(value, dtype=dtype, device=device) for name, value in scalars.items()},
                    **{key: self.state[key][k, columns].view(slot.shape).clone() for key in keys},
                }

    @torch.no_grad()
    def read_from(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Load each member's optimizer state and hyper-parameters into the stack (a member resumed from a checkpoint)."""
        self.model.check_count(optimizers)
        for optimizer in optimizers:
            optimizer._opt_called = True  # the stack steps for it: its LRScheduler must not warn that it never stepped
        self.refresh(optimizers)
        keys = self.rule.all_state_keys()
        for k, optimizer in enumerate(optimizers):
            states = [optimizer.state.get(p, {}) for p in optimizer.param_groups[0]["params"]]
            steps = {float(s["step"]) for s in states if "step" in s} or {0.0}
            if len(steps) > 1:
                raise CannotStack(f"member {k}'s parameters have taken different numbers of steps ({sorted(steps)})")
            self.steps[k] = steps.pop()
            self.rule.read_member(k, states)
            for key in keys:
                row = self.tensor(key)[k]
                for state, slot in zip(states, self.model.layout):
                    columns = row[slot.offset:slot.offset + slot.numel]
                    if state.get(key) is not None:
                        columns.copy_(state[key].reshape(-1))
                    else:
                        columns.fill_(self.rule.initial.get(key, 0.0))

    def keep(self, indices: Sequence[int]) -> None:
        """Shrink to the members at `indices` (with StackedModel.keep of the same indices)."""
        indices = list(indices)
        index = torch.as_tensor(indices, dtype=torch.long, device=self.model.flat.device)
        self.state = {key: t.index_select(0, index) for key, t in self.state.items()}
        self.scratch = []
        self.steps, self.host = self.steps[indices], self.host[:, indices]
        self.rule.keep(indices)
        self.const = self.upload(self.rule.constants(self.hypers()))
