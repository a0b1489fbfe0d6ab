"""A test-only plain rebuild of the authors' DARTS evaluation networks (quark0/darts ``cnn/model.py`` with the
``cnn/operations.py`` ops at ``affine=True``): same module tree (hence state_dict keys), same forward, written
independently of dnas_fast. It is what a user of the authors' code loads their ``weights.pt`` into."""

import torch
from torch import nn


class Seq(nn.Module):
    """A module whose only child is ``op`` (the authors' ReLUConvBN / SepConv / DilConv layout)."""

    def __init__(self, *layers):
        super().__init__()
        self.op = nn.Sequential(*layers)

    def forward(self, x):
        return self.op(x)


def relu_conv_bn(C_in, C_out, k=1, stride=1, pad=0):
    return Seq(nn.ReLU(), nn.Conv2d(C_in, C_out, k, stride, pad, bias=False), nn.BatchNorm2d(C_out))


class Reduce(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(C_out)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], 1))


class Same(nn.Module):
    def forward(self, x):
        return x


def authors_op(name, C, stride):
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":
        return Same() if stride == 1 else Reduce(C, C)
    k = int(name[-1])
    if name.startswith("sep"):
        return Seq(nn.ReLU(), nn.Conv2d(C, C, k, stride, k // 2, groups=C, bias=False), nn.Conv2d(C, C, 1, bias=False),
                   nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, C, k, 1, k // 2, groups=C, bias=False),
                   nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))  # fmt: skip
    return Seq(nn.ReLU(), nn.Conv2d(C, C, k, stride, k - 1, dilation=2, groups=C, bias=False),
               nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))  # fmt: skip


class AuthorsEvalCell(nn.Module):
    def __init__(self, genotype, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = Reduce(C_pp, C) if reduction_prev else relu_conv_bn(C_pp, C)
        self.preprocess1 = relu_conv_bn(C_p, C)
        gene = genotype.reduce if reduction else genotype.normal
        self._concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.multiplier = len(self._concat)
        self._indices = [j for _, j in gene]
        self._ops = nn.ModuleList(authors_op(op, C, 2 if reduction and j < 2 else 1) for op, j in gene)

    def forward(self, s0, s1):  # drop path off: the comparison is deterministic
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self._ops) // 2):
            a, b = 2 * i, 2 * i + 1
            states.append(self._ops[a](states[self._indices[a]]) + self._ops[b](states[self._indices[b]]))
        return torch.cat([states[i] for i in self._concat], 1)


def aux_head(C, num_classes, stride, second_bn):
    features = [nn.ReLU(), nn.AvgPool2d(5, stride, 0, count_include_pad=False), nn.Conv2d(C, 128, 1, bias=False),
                nn.BatchNorm2d(128), nn.ReLU(), nn.Conv2d(128, 768, 2, bias=False)]  # fmt: skip
    features += [nn.BatchNorm2d(768), nn.ReLU()] if second_bn else [nn.ReLU()]
    head = nn.Module()
    head.features = nn.Sequential(*features)
    head.classifier = nn.Linear(768, num_classes)
    return head


class AuthorsNetworkEval(nn.Module):
    """``NetworkCIFAR`` (imagenet=False) or ``NetworkImageNet`` (imagenet=True); forward -> (logits, aux)."""

    def __init__(self, C, num_classes, layers, auxiliary, genotype, imagenet=False):
        super().__init__()
        self.layers, self.auxiliary, self.imagenet = layers, auxiliary, imagenet
        if imagenet:
            self.stem0 = nn.Sequential(nn.Conv2d(3, C // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(C // 2), nn.ReLU(),
                                       nn.Conv2d(C // 2, C, 3, 2, 1, bias=False), nn.BatchNorm2d(C))  # fmt: skip
            self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, 2, 1, bias=False), nn.BatchNorm2d(C))
            C_pp, C_p, C_curr, reduction_prev = C, C, C, True
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
            C_pp, C_p, C_curr, reduction_prev = 3 * C, 3 * C, C, False
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            cell = AuthorsEvalCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev, C_pp, C_p = reduction, C_p, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_p
        if auxiliary:
            self.auxiliary_head = aux_head(C_aux, num_classes, 2 if imagenet else 3, second_bn=not imagenet)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x):
        aux = None
        if self.imagenet:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if i == 2 * self.layers // 3 and self.auxiliary and self.training:
                h = self.auxiliary_head.features(s1)
                aux = self.auxiliary_head.classifier(h.flatten(1))
        return self.classifier(self.global_pooling(s1).flatten(1)), aux
