"""A plain rebuild of the authors' DARTS search network (quark0/darts ``model_search``) and of one step of their
search loop (``train_search.py`` with ``architect.py``): same module tree (hence state_dict keys), same forward,
written independently of dnas_fast. The tests compare against it; ``bench/bench_fair_step.py`` times it.
It is what a user of the authors' code has in memory; interop and drop-in tests compare against it.
``AuthorsPCMixedOp`` and ``weights2`` follow PC-DARTS ``model_search`` (yuhuixu1993/PC-DARTS) the same way."""

import torch
import torch.nn.functional as F
from torch import nn

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"]  # fmt: skip


class Wrapped(nn.Module):
    """A module whose only child is ``op`` (the authors' ReLUConvBN / SepConv / DilConv layout)."""

    def __init__(self, *layers):
        super().__init__()
        self.op = nn.Sequential(*layers)

    def forward(self, x):
        return self.op(x)


def relu_conv_bn(C_in, C_out):
    return Wrapped(nn.ReLU(), nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=False))


def dw_pw(C, k, stride, pad, dil=1):
    return [nn.Conv2d(C, C, k, stride, pad, dilation=dil, groups=C, bias=False), nn.Conv2d(C, C, 1, bias=False)]


class Reduce(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=False)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], 1))


class ZeroOp(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class IdentityOp(nn.Module):
    def forward(self, x):
        return x


def candidate(name, C, stride):
    bn = nn.BatchNorm2d(C, affine=False)
    if name == "none":
        return ZeroOp(stride)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, stride, 1), bn)
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, stride, 1, count_include_pad=False), bn)
    if name == "skip_connect":
        return IdentityOp() if stride == 1 else Reduce(C, C)
    k = int(name[-1])
    if name.startswith("sep"):
        second = dw_pw(C, k, 1, k // 2)
        return Wrapped(nn.ReLU(), *dw_pw(C, k, stride, k // 2), nn.BatchNorm2d(C, affine=False), nn.ReLU(),
                       *second, bn)  # fmt: skip
    return Wrapped(nn.ReLU(), *dw_pw(C, k, stride, k - 1, 2), bn)


class AuthorsMixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList(candidate(p, C, stride) for p in PRIMITIVES)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class AuthorsPCMixedOp(nn.Module):
    """1/k of the channels through the ops, the rest bypassed (2x2 max-pooled on stride 2), then shuffled."""

    def __init__(self, C, stride, k=4):
        super().__init__()
        self.k = k
        self.mp = nn.MaxPool2d(2, 2)
        self._ops = nn.ModuleList(candidate(p, C // k, stride) for p in PRIMITIVES)

    def forward(self, x, weights):
        part, rest = x[:, : x.shape[1] // self.k], x[:, x.shape[1] // self.k :]
        out = sum(w * op(part) for w, op in zip(weights, self._ops))
        out = torch.cat([out, rest if out.shape[2] == x.shape[2] else self.mp(rest)], 1)
        N, C, H, W = out.shape
        return out.view(N, self.k, C // self.k, H, W).transpose(1, 2).reshape(N, C, H, W)


class AuthorsCell(nn.Module):
    def __init__(self, steps, C_pp, C_p, C, reduction, reduction_prev, mixed_op=AuthorsMixedOp, multiplier=4):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.preprocess0 = Reduce(C_pp, C) if reduction_prev else relu_conv_bn(C_pp, C)
        self.preprocess1 = relu_conv_bn(C_p, C)
        self._ops = nn.ModuleList(
            mixed_op(C, 2 if reduction and j < 2 else 1) for i in range(steps) for j in range(2 + i)
        )

    def forward(self, s0, s1, weights, weights2=None):
        """weights2 (Tensor[E], optional): PC-DARTS edge-normalisation weights."""
        states, offset = [self.preprocess0(s0), self.preprocess1(s1)], 0
        for _ in range(self.steps):
            terms = [self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)]
            if weights2 is not None:
                terms = [weights2[offset + j] * t for j, t in enumerate(terms)]
            states.append(sum(terms))
            offset += len(states) - 1
        return torch.cat(states[-self.multiplier :], 1)


class AuthorsNetwork(nn.Module):
    """``make_cell(steps, C_pp, C_p, C, reduction, reduction_prev)`` builds each cell (a drop-in swaps it)."""

    def __init__(self, C, num_classes, layers, steps=4, make_cell=AuthorsCell):
        super().__init__()
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr, reduction_prev = C_curr, C_curr, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            self.cells.append(make_cell(steps, C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev, C_pp, C_p = reduction, C_p, 4 * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        edges = sum(2 + i for i in range(steps))
        self.alphas_normal = 1e-3 * torch.randn(edges, len(PRIMITIVES))
        self.alphas_reduce = 1e-3 * torch.randn(edges, len(PRIMITIVES))

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        return self.classifier(self.global_pooling(s1).flatten(1))


def authors_search_step(model, alphas, w_opt, a_opt, train, valid, lr, unrolled, momentum=0.9, wd=3e-4, r=1e-2):
    """One step of quark0/darts ``train_search.py`` (lines 160-175) with ``architect.py``: the architecture step
    (first order, or the unrolled model and the finite-difference Hessian-vector product), then the weight step
    with ``clip_grad_norm_(5)``."""
    params = list(model.parameters())

    def loss_of(batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    a_opt.zero_grad()
    if not unrolled:
        loss_of(valid).backward()
    else:
        theta = [p.detach().clone() for p in params]
        grads = torch.autograd.grad(loss_of(train), params)
        moments = [w_opt.state[p]["momentum_buffer"] * momentum if p in w_opt.state else 0 for p in params]
        with torch.no_grad():
            for p, t, g, m in zip(params, theta, grads, moments):
                p.copy_(t - lr * (m + g + wd * t))
        unrolled_loss = loss_of(valid)
        dalpha = torch.autograd.grad(unrolled_loss, alphas, retain_graph=True)
        vector = torch.autograd.grad(unrolled_loss, params)
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
        R = r / torch.cat([v.flatten() for v in vector]).norm()
        fd = []
        for sign in (1, -2):
            with torch.no_grad():
                for p, v in zip(params, vector):
                    p.add_(sign * R * v)
            fd.append(torch.autograd.grad(loss_of(train), alphas))
        with torch.no_grad():
            for p, v in zip(params, vector):
                p.add_(R * v)
        for a, d, gp, gn in zip(alphas, dalpha, *fd):
            a.grad = d - lr * (gp - gn) / (2 * R)
    a_opt.step()
    w_opt.zero_grad()
    loss_of(train).backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    w_opt.step()
