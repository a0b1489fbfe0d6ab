"""DARTS (Liu, Simonyan & Yang, ICLR 2019): softmax relaxation, bilevel optimisation.

First order: eq. 6 with xi = 0. Second order: eq. 7 with the unrolled step
``w' = w - xi * (momentum * buf + grad_w L_train + wd * w)`` (xi = the current weight lr, as in the authors'
``architect.py``) and the finite-difference Hessian-vector product of eq. 8 (epsilon = 0.01 / ||grad_w' L_val||).
Follows quark0/darts ``cnn/train_search.py`` and ``cnn/architect.py``: the architecture step before the weight step,
a sequential pass over the validation split, no clip on the alpha gradients (``arch_grad_clip`` adds one).
"""

import torch
from torch.func import functional_call

from .base import StepContext, Strategy, register_strategy


@register_strategy
class Darts(Strategy):
    name = "darts"
    capture_safe = True

    def __init__(self, order: int = 1, fd_radius: float = 1e-2, arch_grad_clip: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if order not in (1, 2):
            raise ValueError(f"DARTS order must be 1 or 2, got {order}")
        if arch_grad_clip is not None and not arch_grad_clip > 0:
            raise ValueError(f"arch_grad_clip must be positive or None, got {arch_grad_clip}")
        self.order, self.fd_radius, self.arch_grad_clip = order, fd_radius, arch_grad_clip

    def arch_step(self, ctx: StepContext, train_batch, valid_batch) -> dict:
        if self.order == 1:
            return super().arch_step(ctx, train_batch, valid_batch)
        self.remember_arch_batch(ctx, valid_batch)
        ctx.a_optimizer.zero_grad(set_to_none=True)
        grads, loss = self.second_order_grads(ctx, train_batch, valid_batch)
        for alpha, g in zip(self.arch_parameters(), grads):
            alpha.grad = g
        ctx.sync_grads(self.arch_parameters())
        self.clip_arch_grads(ctx)
        ctx.precision.step("arch", ctx.a_optimizer)
        return {"arch_loss": loss}

    def _functional_loss(self, ctx, params, batch, phase, autocast=True):
        x, y = batch
        arch = self.arch_weights(phase)
        with ctx.precision.autocast(enabled=autocast):
            logits = functional_call(ctx.module, params, (x, arch))
            loss = ctx.criterion(logits, y)
        extra = self.extra_loss(arch, phase)
        loss = loss if extra is None else loss + extra
        return ctx.precision.scale(loss, "arch")  # fp16: every gradient below is of the scaled loss

    def unrolled_params(self, ctx: StepContext, train_batch, create_graph=False):
        """``w' = w - xi * (momentum * buf + dL_train/dw + wd * w)`` as a name -> tensor dict."""
        names, params = zip(*[(n, p) for n, p in ctx.module.named_parameters() if p.requires_grad])
        group = ctx.w_optimizer.param_groups[0]
        loss = self._functional_loss(ctx, dict(zip(names, params)), train_batch, "weights")
        grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
        grads = ctx.precision.unscaled("arch", grads)  # the unrolled step needs the true gradient
        unrolled = {}
        for n, p, g in zip(names, params, grads):
            g = torch.zeros_like(p) if g is None else g
            buf = ctx.w_optimizer.state.get(p, {}).get("momentum_buffer")
            step = g + group["weight_decay"] * p
            if buf is not None:
                step = step + group["momentum"] * buf
            unrolled[n] = (p if create_graph else p.detach()) - ctx.lr * step
        return unrolled

    def second_order_grads(self, ctx: StepContext, train_batch, valid_batch):
        unrolled = {n: p.requires_grad_() for n, p in self.unrolled_params(ctx, train_batch).items()}
        alphas = self.arch_parameters()
        val_loss = self._functional_loss(ctx, unrolled, valid_batch, "arch")
        grads = torch.autograd.grad(val_loss, alphas + list(unrolled.values()), allow_unused=True)
        dalpha = [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads[: len(alphas)])]
        vector = [torch.zeros_like(p) if g is None else g for p, g in zip(unrolled.values(), grads[len(alphas) :])]
        vector = ctx.precision.unscaled("arch", vector)  # fp16: R * v must not depend on the loss scale
        R = self.fd_radius / torch.cat([v.flatten() for v in vector]).norm().clamp_min(1e-12)
        params = dict(ctx.module.named_parameters())

        def arch_grad_at(sign):
            shifted = {n: params[n].detach() + sign * R * v for n, v in zip(unrolled, vector)}
            # fp32 even under --precision bf16/fp16: the shift R * v (norm fd_radius) is below the rounding of
            # the weights in bf16, so the difference of the two gradients would be rounding noise
            loss = self._functional_loss(ctx, shifted, train_batch, "weights", autocast=False)
            return torch.autograd.grad(loss, alphas, allow_unused=True)

        grads_p, grads_n = arch_grad_at(1.0), arch_grad_at(-1.0)
        out = []
        for d, gp, gn in zip(dalpha, grads_p, grads_n):
            hvp = (gp if gp is not None else 0) - (gn if gn is not None else 0)
            out.append(d - ctx.lr * hvp / (2 * R))
        return out, ctx.precision.unscaled("arch", [val_loss.detach()])[0]
