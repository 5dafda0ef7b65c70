"""One optimizer for a StackedModel, built from its members' torch optimizers: `StackedOptimizer.from_members`.

Each update rule (dnnlab.engine.stacked.rules) mirrors torch 2.13's `_single_tensor_*` function on
the whole (K, P) buffer of every member's parameters at once: per-member hyper-parameters are
(K, 1) tensors, so a step is a handful of kernels whatever K is. Scalars torch computes in Python
(1 - β, bias corrections) are computed the same way in double on the host, rounded to the
parameter dtype as torch's kernels round a Python scalar, and sent in one copy (at `refresh` for
the hyper-parameters, at each step for the step-dependent ones). Members built with torch's fused
kernel step with it: one call for each set of members with equal hyper-parameters and step counts (a
seed sweep: one call for the whole buffer), on their rows of the buffer, and no per-step upload.
`write_back` / `read_from` convert the stacked state to and from each member's own optimizer, in torch's format.
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
        self.read_once = False  # `refresh` has read the members' hyper-parameters
        self.kernel = self.fused and rule.has_fused  # step with torch's fused kernel (`rule.fused`)
        self.groups: list[tuple[list[int], dict[str, float]]] | None = None  # members a fused call steps together
        self.row_views: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.sync_steps()

    @classmethod
    def from_members(cls, optimizers: Sequence[torch.optim.Optimizer], model: StackedModel) -> StackedOptimizer:
        """The stacked optimizer of K members' optimizers (one class, one param group each) over `model`."""
        model.check_count(optimizers)
        groups = [only_group(o, model) for o in optimizers]
        fused = all(g.get("fused") for g in groups)  # torch's fused kernel only if every member uses it
        stacked = cls(model, rule_for(optimizers, groups), {**groups[0], "fused": fused})
        stacked.read_from(optimizers)
        return stacked

    # ------------------------------------------------------------------ hyper-parameters
    def hypers(self) -> dict[str, np.ndarray]:
        """The members' hyper-parameters by name, each a (K,) array of doubles."""
        return dict(zip(self.rule.hypers, self.host))

    def refresh(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Re-read every member's current hyper-parameters (its schedule changed them); nothing is sent when none changed."""
        host = np.array([self.rule.read(o.param_groups[0]) for o in optimizers], dtype=np.float64).T.reshape(self.host.shape)
        if self.read_once and np.array_equal(host, self.host):
            return
        self.host, self.read_once = host, True
        constants = self.rule.constants(self.hypers())  # also sets the rule's host flags
        self.const = {} if self.kernel else self.upload(constants)
        self.regroup()

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
        if self.kernel:
            if self.rule.counts_steps:
                self.step_tensor.add_(1)  # torch's fused step reads the incremented count
            for members, h in self.member_groups():
                self.rule.fused(self, members, h)
            return
        c = {**self.const, **self.upload(self.rule.per_step(self.hypers(), self.steps))}
        self.rule.update(self, self.model.flat, self.model.flat_grad, c)

    # ------------------------------------------------------------------ the fused kernels' arguments
    def member_groups(self) -> list[tuple[list[int], dict[str, float]]]:
        """Members with equal hyper-parameters, step counts and rule state, each set with its hyper-parameters."""
        if self.groups is None:
            found: dict[tuple, list[int]] = {}
            for k in range(self.model.members):
                key = (*self.host[:, k].tolist(), float(self.steps[k]), *self.rule.group_key(k))
                found.setdefault(key, []).append(k)
            self.groups = [(members, dict(zip(self.rule.hypers, self.host[:, members[0]].tolist())))
                           for members in found.values()]
        return self.groups

    def regroup(self) -> None:
        self.groups = None

    def rows(self, t: torch.Tensor, members: list[int]) -> list[torch.Tensor]:
        """The (K, P) tensor `t` as a fused kernel's tensor list for `members`: itself for the whole stack, else their rows."""
        if len(members) == self.model.members:
            return [t]
        cached = self.row_views.get(id(t))
        if cached is None or cached[0] is not t:
            cached = self.row_views[id(t)] = (t, t.unbind(0))
        return [cached[1][k] for k in members]

    def step_rows(self, members: list[int]) -> list[torch.Tensor]:
        """The step counts that go with `rows(…, members)`: one per tensor (the members of a call have equal counts)."""
        return [self.step_views[members[0]]] if len(members) == self.model.members else [self.step_views[k] for k in members]

    def sync_steps(self) -> None:
        """The members' step counts as the float32 device tensors torch's fused kernels read and increment."""
        flat = self.model.flat
        self.step_tensor = torch.tensor(self.steps, dtype=torch.float32, device=flat.device)
        self.step_views = self.step_tensor.unbind(0)
        self.regroup()

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
        self.sync_steps()

    def keep(self, indices: Sequence[int]) -> None:
        """Shrink to the members at `indices` (with StackedModel.keep of the same indices)."""
        indices = list(indices)
        index = torch.as_tensor(indices, dtype=torch.long, device=self.model.flat.device)
        self.state = {key: t.index_select(0, index) for key, t in self.state.items()}
        self.scratch = []
        self.steps, self.host = self.steps[indices], self.host[:, indices]
        self.rule.keep(indices)
        constants = self.rule.constants(self.hypers())
        self.const = {} if self.kernel else self.upload(constants)
        self.row_views = {}
        self.sync_steps()
