"""Drop-in MixedOp / PCMixedOp swapped into cells built like the authors' code: same state_dict, same outputs and
gradients. The reference below is a test-only transcription of quark0/darts ``operations.py`` and
``model_search.py`` (MixedOp, Cell) and yuhuixu1993/PC-DARTS ``model_search.py`` (MixedOp with k=4, Cell with
edge weights ``weights2``)."""

import pytest
import torch
import torch.nn as nn

from dnas_fast import _backend
from dnas_fast.compat import MixedOp, PCMixedOp
from tests.utils import assert_close

# ---- authors' code, transcribed (reference only) ---------------------------------------------------------------

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]  # fmt: skip


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}


class AuthorsMixedOp(nn.Module):  # quark0/darts model_search.MixedOp
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


def channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.data.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class AuthorsPCMixedOp(nn.Module):  # yuhuixu1993/PC-DARTS model_search.MixedOp
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        self.mp = nn.MaxPool2d(2, 2)
        self.k = 4
        for primitive in PRIMITIVES:
            op = OPS[primitive](C // self.k, stride, False)
            if "pool" in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C // self.k, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        dim_2 = x.shape[1]
        xtemp = x[:, : dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k :, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops))
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        return channel_shuffle(ans, self.k)


class Cell(nn.Module):  # model_search.Cell of both papers; PC-DARTS adds the edge weights ``weights2``
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, mixed_op):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(self._steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride))

    def forward(self, s0, s1, weights, weights2=None):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for _ in range(self._steps):
            if weights2 is None:
                s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                s = sum(
                    weights2[offset + j] * self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states)
                )
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier :], dim=1)


# ---- tests ------------------------------------------------------------------------------------------------------

CASES = {
    "darts-normal": (AuthorsMixedOp, MixedOp, False, False),
    "darts-reduce": (AuthorsMixedOp, MixedOp, True, False),
    "pcdarts-normal": (AuthorsPCMixedOp, PCMixedOp, False, True),
    "pcdarts-reduce": (AuthorsPCMixedOp, PCMixedOp, True, True),
}


def cell_grads(cell, s0, s1, alphas, betas):
    s0, s1 = s0.clone().requires_grad_(), s1.clone().requires_grad_()
    alphas, betas = alphas.clone().requires_grad_(), betas.clone().requires_grad_()
    weights = torch.softmax(alphas, dim=-1)
    weights2 = torch.softmax(betas, dim=-1) if cell._pc else None
    out = cell(s0, s1, weights, weights2)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    params = list(cell.parameters())
    grads = torch.autograd.grad(out, [s0, s1, alphas, betas, *params], g, allow_unused=True)
    names = ["s0", "s1", "alphas", "betas", *(n for n, _ in cell.named_parameters())]
    return out.detach(), {n: d for n, d in zip(names, grads) if d is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_drop_in_matches_authors_cell(case, monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)  # our MixedOp runs on ``auto``: the fused path
    authors_op, our_op, reduction, pc = CASES[case]
    torch.manual_seed(0)
    C, steps = 8, 2
    ref = Cell(steps, 2, 12, 12, C, reduction, False, authors_op)
    ours = Cell(steps, 2, 12, 12, C, reduction, False, our_op)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing and not unexpected
    assert _backend.resolve_backend(None, torch.device("cpu"), ours._ops[0]).name in ("cpu", "fused")
    ref._pc = ours._pc = pc
    s0, s1 = torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)
    alphas, betas = 1e-1 * torch.randn(5, 8), torch.randn(5)
    out_r, grads_r = cell_grads(ref, s0, s1, alphas, betas)
    out_o, grads_o = cell_grads(ours, s0, s1, alphas, betas)
    assert_close("out", out_o, out_r, atol=1e-5, rtol=1e-4)
    assert set(grads_o) == set(grads_r)
    for name in grads_r:
        scale = grads_r[name].abs().max().item() + 1e-3
        assert_close(f"d{name}", grads_o[name], grads_r[name], atol=1e-4 * scale, rtol=1e-3)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert_close(f"state {name}", a.double(), b.double(), atol=1e-5, rtol=1e-4)


def test_state_dict_keys_are_the_authors():
    assert list(MixedOp(8, 2).state_dict()) == list(AuthorsMixedOp(8, 2).state_dict())
    assert list(PCMixedOp(8, 2).state_dict()) == list(AuthorsPCMixedOp(8, 2).state_dict())


def test_bad_partial_channel_k():
    with pytest.raises(ValueError, match="partial_channels=3"):
        PCMixedOp(8, 1, k=3)
