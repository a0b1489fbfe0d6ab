"""DARTS (Liu et al., ICLR 2019): first- and second-order architecture gradients."""

import pytest
import torch
from torch import nn

from dnas_fast import build_space, build_strategy
from dnas_fast.strategies import StepContext
from tests.utils import assert_close


def tiny_setup(order, dtype=torch.float64, seed=0, **hparams):
    torch.manual_seed(seed)
    strategy = build_strategy("darts", order=order, **hparams)
    space = build_space("nb201", C=4, N=1, in_channels=1, backend="reference").to(dtype)
    strategy.setup(space.arch_spec())
    strategy.to(dtype)
    w_opt = torch.optim.SGD(space.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)
    ctx = StepContext(space, space, nn.CrossEntropyLoss(), w_opt, strategy.make_arch_optimizer(), lr=0.05)
    x = torch.randn(8, 1, 6, 6, dtype=dtype)
    batches = [(x[:4], torch.randint(0, 10, (4,))), (x[4:], torch.randint(0, 10, (4,)))]
    return strategy, space, ctx, batches


def second_order_error(fd_radius):
    strategy, space, ctx, (train, valid) = tiny_setup(order=2, fd_radius=fd_radius)
    strategy.weight_step(ctx, train)  # fill the momentum buffers: the unrolled step must use them
    # Exact: differentiate L_val(w - xi * (m * buf + dL_train/dw + wd * w), alpha) through the unrolled step.
    unrolled = strategy.unrolled_params(ctx, train, create_graph=True)
    val_loss = strategy._functional_loss(ctx, unrolled, valid, "arch")
    (exact,) = torch.autograd.grad(val_loss, strategy.arch_parameters())
    (approx,), _ = strategy.second_order_grads(ctx, train, valid)
    (first_order,) = torch.autograd.grad(strategy.loss(ctx, *valid, "arch")[0], strategy.arch_parameters())
    assert (exact - first_order).abs().max() > 1e-4, "the unrolled term must matter in this test"
    return exact, approx


def test_second_order_finite_difference_matches_exact_unrolled_gradient():
    # float64 and a radius below the ReLU kinks of this tiny net (the paper's 0.01 crosses some of them here)
    exact, approx = second_order_error(1e-4)
    assert_close("dalpha (finite difference vs double backward)", approx, exact, atol=1e-8, rtol=1e-6)
    # central differences: the error shrinks as R^2
    exact3, approx3 = second_order_error(1e-3)
    assert (approx3 - exact3).abs().max() > 30 * (approx - exact).abs().max()


def test_first_order_step_uses_validation_gradient():
    strategy, space, ctx, (train, valid) = tiny_setup(order=1)
    before = strategy.alphas["cell"].detach().clone()
    loss, _ = strategy.loss(ctx, *valid, "arch")
    (grad,) = torch.autograd.grad(loss, strategy.alphas["cell"])
    strategy.arch_step(ctx, train, valid)
    # Adam's first step moves each alpha by lr * sign(g) (bias-corrected m/sqrt(v)); weight decay adds wd*alpha
    expected = before - strategy.arch_lr * torch.sign(grad + strategy.arch_weight_decay * before)
    assert_close("alpha after one Adam step", strategy.alphas["cell"].detach(), expected, atol=1e-9, rtol=1e-6)


def test_darts_order_validated():
    with pytest.raises(ValueError, match="order"):
        build_strategy("darts", order=3)
