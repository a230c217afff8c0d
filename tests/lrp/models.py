"""Small models for the engine tests: every supported layer type, in module and functional forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def randomize_bn(model: nn.Module) -> nn.Module:
    """Random BatchNorm scales, shifts and running statistics, so that folding them matters; returns ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


class EveryLayer(nn.Module):
    """A tiny classifier that contains every layer type the engine supports."""

    def __init__(self, in_ch: int = 3, classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # overlapping windows
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(4))
        self.side = nn.Conv2d(4, 2, 1)
        self.norm = nn.BatchNorm2d(6)  # standalone, after a concatenation
        self.grouped = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.drop2d = nn.Dropout2d(0.25)
        self.adaptive = nn.AdaptiveAvgPool2d((2, 2))
        self.maxpool2 = nn.AdaptiveMaxPool2d((2, 2))
        self.head = nn.Sequential(nn.Linear(32, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Identity())
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.pool(x)
        y = self.branch(x)
        y += x
        y = F.relu(y)
        y = torch.cat([y, self.side(y)], dim=1)
        y = F.relu(self.norm(y), inplace=True)
        y = self.drop2d(self.avg(self.grouped(y)))
        y = torch.cat([self.adaptive(y), self.maxpool2(y)], 1)
        y = F.dropout(y.view(y.size(0), -1), 0.1, self.training)
        return self.fc(self.head(y))


class ModuleForm(nn.Module):
    """Residual CNN written with modules only."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        a = self.relu1(self.conv1(x))
        b = self.relu2(self.conv2(a) + a)
        b = self.pool(b)
        return self.fc(self.flat(self.avg(torch.cat([b, b], 1))))


class FunctionalForm(ModuleForm):
    """The same computation written with functional and in-place operator forms."""

    def forward(self, x):
        a = F.relu(self.conv1(x), inplace=True)
        b = self.conv2(a)
        b += a
        b = torch.relu(b)
        b = F.max_pool2d(b, 2)
        c = torch.cat((b, b), dim=1)
        c = F.adaptive_avg_pool2d(c, 1)
        return self.fc(torch.flatten(c, 1))


class MethodForm(ModuleForm):
    """The same computation with tensor methods: ``x.relu()``, ``torch.add``, ``.view(x.size(0), -1)``, mean."""

    def forward(self, x):
        a = self.conv1(x).relu()
        b = torch.add(self.conv2(a), a).relu_()
        b = self.pool(b)
        c = torch.cat([b, b], 1).mean((2, 3), keepdim=True)
        return self.fc(c.view(c.size(0), -1))
