"""The stacked update rules: torch 2.13's `_single_tensor_*` optimizers on a (K, P) buffer of K members.

Each rule reads its members' hyper-parameters, precomputes the per-member scalars torch computes in
Python (host doubles, `constants` when the hyper-parameters change and `per_step` when the step
count does), and updates whole stacked tensors with (K, 1) scalars where torch passes a Python
number. Where torch writes `x.op_(y, value=s)` the rule writes `x.op_(y * s)`: the same products
in the same order. A member whose value disables a branch in torch (weight_decay=0, momentum=0)
gets the value that makes the branch an exact no-op. When the members' optimizers are fused (dnnlab's
`optimizer.implementation=auto` on CPU and CUDA), the rules that torch has a fused kernel for (SGD, Adam,
AdamW, Adagrad) step with that kernel instead (`fused`): bit for bit the members' own updates.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from dnnlab.engine.stacked.model import CannotStack

if TYPE_CHECKING:
    from dnnlab.engine.stacked.optim import StackedOptimizer

Consts = dict[str, torch.Tensor]


class Rule:
    """One torch optimizer class's update for a stack; subclasses declare what they read and hold."""

    torch_classes: ClassVar[tuple[type, ...]] = ()
    hypers: ClassVar[tuple[str, ...]] = ()  # per-member numbers in param_groups[0] ("beta1"/"beta2" come from "betas")
    flags: ClassVar[tuple[str, ...]] = ()  # booleans that select the math: equal across the members
    lazy: ClassVar[bool] = True  # torch creates a parameter's state at its first step (Adagrad: at construction)
    counts_steps: ClassVar[bool] = True  # the state has a "step" tensor
    initial: ClassVar[dict[str, float]] = {}  # a state tensor's value before any step (default 0)
    has_fused: ClassVar[bool] = False  # torch has a fused kernel for it: members built `fused=True` step with it (`fused`)

    def __init__(self, settings: dict[str, bool], members: int):
        self.settings, self.members = settings, members
        self.any_weight_decay = False

    def read(self, group: dict[str, Any]) -> list[float]:
        """This rule's hyper-parameters from one member's param group, as doubles."""
        betas = group.get("betas", (None, None))
        values = {**group, "beta1": betas[0], "beta2": betas[1]}
        return [float(values[key]) for key in self.hypers]

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(K,) per-member scalars that change only with the hyper-parameters; sets the rule's host flags."""
        self.any_weight_decay = bool(np.any(h["weight_decay"] != 0))
        return {"weight_decay": h["weight_decay"]}

    def per_step(self, h: dict[str, np.ndarray], step: np.ndarray) -> dict[str, np.ndarray]:
        """(K,) per-member scalars of this step (`step` holds the members' counts after this step's increment)."""
        return {}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        raise NotImplementedError

    def fused(self, opt: StackedOptimizer, members: list[int], h: dict[str, float]) -> None:
        """Step `members` (equal hyper-parameters `h`, steps and `group_key`) with torch's fused kernel, on their rows."""
        raise NotImplementedError

    def group_key(self, k: int) -> tuple:
        """Member k's host state that the fused kernel takes as one argument for all the tensors of a call."""
        return ()

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        """The state tensors member k's torch optimizer holds per parameter once it has stepped (`h`: its hyper-parameters)."""
        raise NotImplementedError

    def all_state_keys(self) -> list[str]:
        """The state tensors the stack keeps (for all members)."""
        raise NotImplementedError

    def read_member(self, k: int, states: list[dict[str, Any]]) -> None:
        """Take member k's rule-specific host state from its torch optimizer's per-parameter states."""

    def member_scalars(self, k: int) -> dict[str, float]:
        """Member k's rule-specific scalar state (besides step), as torch stores it per parameter."""
        return {}

    def keep(self, indices: list[int]) -> None:
        """Shrink the rule's host state to the members at `indices`."""

    def decayed(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> torch.Tensor:
        """grad + weight_decay·param: torch's `grad.add(param, alpha=weight_decay)`, a new tensor (grad is kept)."""
        if not self.any_weight_decay:
            return grad
        return torch.addcmul(grad, p, c["weight_decay"], out=opt.tmp(0))


class SGD(Rule):
    """torch.optim.SGD: weight decay, momentum with dampening, Nesterov; a member's first step starts its buffer at the gradient."""

    torch_classes = (torch.optim.SGD,)
    hypers = ("lr", "momentum", "dampening", "weight_decay")
    flags = ("nesterov",)
    counts_steps = False
    has_fused = True

    def __init__(self, settings: dict[str, bool], members: int):
        super().__init__(settings, members)
        self.fresh = np.ones(members, dtype=bool)  # no momentum buffer yet: torch's buffer starts as a copy of the gradient

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        moving = h["momentum"] != 0
        self.any_momentum = bool(moving.any())
        # a member without momentum uses its gradient as is: buffer = 0·buffer + 1·gradient
        one_minus_dampening = np.where(moving, 1 - h["dampening"], 1.0)
        self.undamped = bool(np.all(one_minus_dampening == 1))
        return {**super().constants(h), "neg_lr": -h["lr"], "momentum": h["momentum"],
                "one_minus_dampening": one_minus_dampening}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        g = self.decayed(opt, p, grad, c)
        if self.any_momentum:
            buf = opt.tensor("momentum_buffer")
            if self.fresh.all():
                buf.copy_(g)
            else:
                buf.mul_(c["momentum"])
                buf.add_(g) if self.undamped else buf.addcmul_(g, c["one_minus_dampening"])
                if self.fresh.any():
                    index = torch.as_tensor(np.flatnonzero(self.fresh), device=p.device)
                    buf.index_copy_(0, index, g.index_select(0, index))
            self.fresh[:] = False
            g = torch.addcmul(g, buf, c["momentum"], out=opt.tmp(1)) if self.settings["nesterov"] else buf
        p.addcmul_(g, c["neg_lr"])

    def fused(self, opt: StackedOptimizer, members: list[int], h: dict[str, float]) -> None:
        # torch's _fused_sgd: no buffer at momentum 0; the first step copies the gradient into the buffer
        moving = h["momentum"] != 0
        first = moving and bool(self.fresh[members[0]])
        torch._fused_sgd_(opt.rows(opt.model.flat, members), opt.rows(opt.model.flat_grad, members),
                          opt.rows(opt.tensor("momentum_buffer"), members) if moving else [],
                          weight_decay=h["weight_decay"], momentum=h["momentum"], lr=h["lr"], dampening=h["dampening"],
                          nesterov=self.settings["nesterov"], maximize=False, is_first_step=first)
        if first:
            self.fresh[members] = False
            opt.regroup()

    def group_key(self, k: int) -> tuple:
        return (bool(self.fresh[k]),)

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        return ["momentum_buffer"] if h["momentum"] != 0 and not self.fresh[k] else []

    def all_state_keys(self) -> list[str]:
        return ["momentum_buffer"] if self.any_momentum else []

    def read_member(self, k: int, states: list[dict[str, Any]]) -> None:
        self.fresh[k] = any(s.get("momentum_buffer") is None for s in states)

    def keep(self, indices: list[int]) -> None:
        self.fresh = self.fresh[indices]


class Adam(Rule):
    """torch.optim.Adam and AdamW (decoupled weight decay), amsgrad included."""

    torch_classes = (torch.optim.Adam, torch.optim.AdamW)
    hypers = ("lr", "beta1", "beta2", "eps", "weight_decay")
    flags = ("amsgrad", "decoupled_weight_decay")
    has_fused = True

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**super().constants(h), **moments(h), "eps": h["eps"], "decay": 1 - h["lr"] * h["weight_decay"]}

    def per_step(self, h: dict[str, np.ndarray], step: np.ndarray) -> dict[str, np.ndarray]:
        return {"neg_step_size": -(h["lr"] / (1 - h["beta1"] ** step)), "bias_correction2_sqrt": (1 - h["beta2"] ** step) ** 0.5}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        g = decoupled_or_coupled(self, opt, p, grad, c)
        exp_avg, exp_avg_sq = update_moments(opt, g, c)
        if self.settings["amsgrad"]:
            exp_avg_sq = torch.maximum(opt.tensor("max_exp_avg_sq"), exp_avg_sq, out=opt.tensor("max_exp_avg_sq"))
        denom = torch.sqrt(exp_avg_sq, out=opt.tmp(1)).div_(c["bias_correction2_sqrt"]).add_(c["eps"])
        p.addcdiv_(torch.mul(exp_avg, c["neg_step_size"], out=opt.tmp(2)), denom)

    def fused(self, opt: StackedOptimizer, members: list[int], h: dict[str, float]) -> None:
        kernel = torch._fused_adamw_ if self.settings["decoupled_weight_decay"] else torch._fused_adam_
        amsgrad = self.settings["amsgrad"]
        kernel(opt.rows(opt.model.flat, members), opt.rows(opt.model.flat_grad, members),
               opt.rows(opt.tensor("exp_avg"), members), opt.rows(opt.tensor("exp_avg_sq"), members),
               opt.rows(opt.tensor("max_exp_avg_sq"), members) if amsgrad else [], opt.step_rows(members),
               lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], weight_decay=h["weight_decay"], eps=h["eps"],
               amsgrad=amsgrad, maximize=False)

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        return self.all_state_keys()

    def all_state_keys(self) -> list[str]:
        return ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if self.settings["amsgrad"] else [])]


class NAdam(Rule):
    """torch.optim.NAdam: momentum_decay's μ schedule and its running product (float32, as torch keeps it)."""

    torch_classes = (torch.optim.NAdam,)
    hypers = ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay")
    flags = ("decoupled_weight_decay",)

    def __init__(self, settings: dict[str, bool], members: int):
        super().__init__(settings, members)
        self.mu_product = np.ones(members, dtype=np.float32)

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**super().constants(h), **moments(h), "eps": h["eps"], "decay": 1 - h["lr"] * h["weight_decay"]}

    def per_step(self, h: dict[str, np.ndarray], step: np.ndarray) -> dict[str, np.ndarray]:
        lr, beta1, decay = h["lr"], h["beta1"], h["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * decay)))
        self.mu_product = self.mu_product * mu.astype(np.float32)  # torch: a float32 tensor *= a Python float
        product = self.mu_product.astype(np.float64)
        return {"bias_correction2": 1 - h["beta2"] ** step, "grad_scale": -lr * (1.0 - mu) / (1.0 - product),
                "avg_scale": (-lr * mu_next) / (1.0 - product * mu_next)}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        g = decoupled_or_coupled(self, opt, p, grad, c)
        exp_avg, exp_avg_sq = update_moments(opt, g, c)
        denom = torch.div(exp_avg_sq, c["bias_correction2"], out=opt.tmp(1)).sqrt_().add_(c["eps"])
        p.addcdiv_(torch.mul(g, c["grad_scale"], out=opt.tmp(2)), denom)
        p.addcdiv_(torch.mul(exp_avg, c["avg_scale"], out=opt.tmp(2)), denom)

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        return self.all_state_keys()

    def all_state_keys(self) -> list[str]:
        return ["exp_avg", "exp_avg_sq"]

    def read_member(self, k: int, states: list[dict[str, Any]]) -> None:
        products = {float(s["mu_product"]) for s in states if "mu_product" in s} or {1.0}
        if len(products) > 1:
            raise CannotStack(f"member {k}'s parameters have different NAdam mu_product states ({sorted(products)})")
        self.mu_product[k] = products.pop()

    def member_scalars(self, k: int) -> dict[str, float]:
        return {"mu_product": float(self.mu_product[k])}

    def keep(self, indices: list[int]) -> None:
        self.mu_product = self.mu_product[indices]


class RMSprop(Rule):
    """torch.optim.RMSprop: smoothing alpha, centered, momentum (a member with momentum 0 has no buffer in torch)."""

    torch_classes = (torch.optim.RMSprop,)
    hypers = ("lr", "alpha", "eps", "weight_decay", "momentum")
    flags = ("centered",)

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        moving = h["momentum"] > 0
        self.any_momentum, self.mixed = bool(moving.any()), bool(moving.any() and not moving.all())
        # With some members at momentum 0, each member takes its own branch and adds an exact 0 from the other.
        return {**super().constants(h), "alpha": h["alpha"], "one_minus_alpha": 1 - h["alpha"], "eps": h["eps"],
                "momentum": h["momentum"], "neg_lr": -h["lr"], "neg_lr_moving": np.where(moving, -h["lr"], 0.0),
                "neg_lr_still": np.where(moving, 0.0, -h["lr"])}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        g = self.decayed(opt, p, grad, c)
        square_avg = opt.tensor("square_avg")
        square_avg.mul_(c["alpha"]).addcmul_(torch.mul(g, c["one_minus_alpha"], out=opt.tmp(1)), g)
        if self.settings["centered"]:
            grad_avg = opt.tensor("grad_avg").lerp_(g, c["one_minus_alpha"])
            avg = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1, out=opt.tmp(1)).sqrt_()
        else:
            avg = torch.sqrt(square_avg, out=opt.tmp(1))
        avg.add_(c["eps"])
        if self.any_momentum:
            buf = opt.tensor("momentum_buffer").mul_(c["momentum"]).addcdiv_(g, avg)
            p.addcmul_(buf, c["neg_lr_moving" if self.mixed else "neg_lr"])
        if not self.any_momentum or self.mixed:
            p.addcdiv_(torch.mul(g, c["neg_lr_still" if self.mixed else "neg_lr"], out=opt.tmp(2)), avg)

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        return ["square_avg", *(["momentum_buffer"] if h["momentum"] > 0 else []),
                *(["grad_avg"] if self.settings["centered"] else [])]

    def all_state_keys(self) -> list[str]:
        return ["square_avg", *(["momentum_buffer"] if self.any_momentum else []),
                *(["grad_avg"] if self.settings["centered"] else [])]


class Adagrad(Rule):
    """torch.optim.Adagrad: lr_decay; the accumulator (and its initial value) lives in the state from construction."""

    torch_classes = (torch.optim.Adagrad,)
    hypers = ("lr", "lr_decay", "weight_decay", "eps")
    lazy = False
    has_fused = True

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**super().constants(h), "eps": h["eps"]}

    def per_step(self, h: dict[str, np.ndarray], step: np.ndarray) -> dict[str, np.ndarray]:
        return {"neg_clr": -(h["lr"] / (1 + (step - 1) * h["lr_decay"]))}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        g = self.decayed(opt, p, grad, c)
        state_sum = opt.tensor("sum").addcmul_(g, g)
        std = torch.sqrt(state_sum, out=opt.tmp(1)).add_(c["eps"])
        p.addcdiv_(torch.mul(g, c["neg_clr"], out=opt.tmp(2)), std)

    def fused(self, opt: StackedOptimizer, members: list[int], h: dict[str, float]) -> None:
        torch._fused_adagrad_(opt.rows(opt.model.flat, members), opt.rows(opt.model.flat_grad, members),
                              opt.rows(opt.tensor("sum"), members), opt.step_rows(members), lr=h["lr"],
                              lr_decay=h["lr_decay"], weight_decay=h["weight_decay"], eps=h["eps"], maximize=False)

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        return ["sum"]

    def all_state_keys(self) -> list[str]:
        return ["sum"]


class Adamax(Rule):
    """torch.optim.Adamax: Adam with the infinity norm of past gradients."""

    torch_classes = (torch.optim.Adamax,)
    hypers = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def constants(self, h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**super().constants(h), "one_minus_beta1": 1 - h["beta1"], "beta2": h["beta2"], "eps": h["eps"]}

    def per_step(self, h: dict[str, np.ndarray], step: np.ndarray) -> dict[str, np.ndarray]:
        return {"neg_clr": -(h["lr"] / (1 - h["beta1"] ** step))}

    def update(self, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> None:
        g = self.decayed(opt, p, grad, c)
        exp_avg = opt.tensor("exp_avg").lerp_(g, c["one_minus_beta1"])
        exp_inf = opt.tensor("exp_inf")
        torch.maximum(exp_inf.mul_(c["beta2"]), torch.abs(g, out=opt.tmp(1)).add_(c["eps"]), out=exp_inf)
        p.addcdiv_(torch.mul(exp_avg, c["neg_clr"], out=opt.tmp(2)), exp_inf)

    def state_keys(self, k: int, h: dict[str, float]) -> list[str]:
        return ["exp_avg", "exp_inf"]

    def all_state_keys(self) -> list[str]:
        return ["exp_avg", "exp_inf"]


def moments(h: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adam's and NAdam's moment coefficients."""
    return {"one_minus_beta1": 1 - h["beta1"], "beta2": h["beta2"], "one_minus_beta2": 1 - h["beta2"]}


def decoupled_or_coupled(rule: Rule, opt: StackedOptimizer, p: torch.Tensor, grad: torch.Tensor, c: Consts) -> torch.Tensor:
    """Adam-family weight decay: param·(1 − lr·wd) when decoupled (AdamW), else into the gradient."""
    if rule.settings["decoupled_weight_decay"]:
        if rule.any_weight_decay:
            p.mul_(c["decay"])
        return grad
    return rule.decayed(opt, p, grad, c)


def update_moments(opt: StackedOptimizer, g: torch.Tensor, c: Consts) -> tuple[torch.Tensor, torch.Tensor]:
    """exp_avg.lerp_(g, 1-β1); exp_avg_sq.mul_(β2).addcmul_(g, g, value=1-β2)."""
    exp_avg = opt.tensor("exp_avg").lerp_(g, c["one_minus_beta1"])
    exp_avg_sq = opt.tensor("exp_avg_sq").mul_(c["beta2"])
    exp_avg_sq.addcmul_(torch.mul(g, c["one_minus_beta2"], out=opt.tmp(1)), g)
    return exp_avg, exp_avg_sq


RULES: tuple[type[Rule], ...] = (SGD, Adam, NAdam, RMSprop, Adagrad, Adamax)
