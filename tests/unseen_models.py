"""Small CIFAR-sized architectures that slimship's zoo does not have, each with a structure
the pruner must follow or refuse in one line: grouped convs, dense concatenation, channel
split + shuffle, a 1x1-conv classifier, LayerNorm over channels with layer scale, ConvMixer.
Used by the pruning-robustness tests as `file.py:factory` models would be."""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class _NeXtBlock(nn.Module):
    def __init__(self, cin, cout, stride, groups=4):
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(
            _cbr(cin, mid, 1), _cbr(mid, mid, 3, stride, groups), nn.Conv2d(mid, cout, 1)
        )
        self.skip = nn.Conv2d(cin, cout, 1, stride) if stride > 1 or cin != cout else None

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.skip is None else self.skip(x)))


def resnext(num_classes=10, in_channels=3):
    """Residual blocks with grouped 3x3 convs (groups=4), ResNeXt style."""
    return nn.Sequential(
        _cbr(in_channels, 32),
        _NeXtBlock(32, 64, 2),
        _NeXtBlock(64, 64, 1),
        _NeXtBlock(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.conv = _cbr(cin, growth)

    def forward(self, x):
        return torch.cat([x, self.conv(x)], 1)


def densenet(num_classes=10, in_channels=3):
    """Dense blocks: every layer's output concatenated to its input."""
    return nn.Sequential(
        _cbr(in_channels, 16),
        _DenseLayer(16, 16),
        _DenseLayer(32, 16),
        _cbr(48, 32, 1),
        nn.AvgPool2d(2),
        _DenseLayer(32, 16),
        _DenseLayer(48, 16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def _shuffle(x, groups=2):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleUnit(nn.Module):
    def __init__(self, c):
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            _cbr(half, half, 1), _cbr(half, half, 3, groups=half), _cbr(half, half, 1)
        )

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return _shuffle(torch.cat([a, self.branch(b)], 1))


def shufflenet(num_classes=10, in_channels=3):
    """ShuffleNetV2 units: channel split, a branch on one half, concat, channel shuffle."""
    return nn.Sequential(
        _cbr(in_channels, 48),
        _ShuffleUnit(48),
        _ShuffleUnit(48),
        _cbr(48, 96, 3, 2),
        _ShuffleUnit(96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, num_classes),
    )


class _Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = _cbr(cin, squeeze, 1)
        self.e1 = _cbr(squeeze, expand, 1)
        self.e3 = _cbr(squeeze, expand, 3)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


def squeezenet(num_classes=10, in_channels=3):
    """Fire modules and a 1x1-conv classifier followed by global pooling (SqueezeNet)."""
    return nn.Sequential(
        _cbr(in_channels, 32),
        _Fire(32, 16, 32),
        nn.MaxPool2d(2),
        _Fire(64, 16, 32),
        nn.Conv2d(64, num_classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


class _ChannelsLastNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = _ChannelsLastNorm(c)
        self.pw1 = nn.Conv2d(c, 4 * c, 1)
        self.pw2 = nn.Conv2d(4 * c, c, 1)
        self.gamma = nn.Parameter(torch.full((1, c, 1, 1), 0.1))

    def forward(self, x):
        return x + self.gamma * self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(self.dw(x)))))


def convnext(num_classes=10, in_channels=3):
    """ConvNeXt blocks: depthwise 7x7, LayerNorm over channels, inverted MLP, layer scale."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 4, 4),
        _ChannelsLastNorm(32),
        _ConvNeXtBlock(32),
        _ConvNeXtBlock(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


class _Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def convmixer(num_classes=10, in_channels=3, dim=64, depth=3):
    """ConvMixer (Trockman & Kolter): patch embedding, residual depthwise + pointwise mixing."""
    act = nn.GELU
    return nn.Sequential(
        nn.Conv2d(in_channels, dim, 2, 2),
        act(),
        nn.BatchNorm2d(dim),
        *[
            nn.Sequential(
                _Residual(
                    nn.Sequential(
                        nn.Conv2d(dim, dim, 5, groups=dim, padding=2), act(), nn.BatchNorm2d(dim)
                    )
                ),
                nn.Conv2d(dim, dim, 1),
                act(),
                nn.BatchNorm2d(dim),
            )
            for _ in range(depth)
        ],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(dim, num_classes),
    )


ALL = {
    "resnext": resnext,
    "densenet": densenet,
    "shufflenet": shufflenet,
    "squeezenet": squeezenet,
    "convnext": convnext,
    "convmixer": convmixer,
}
