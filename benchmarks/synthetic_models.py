"""Random small networks, seeded, as extra fitting data for the latency estimator (issue 5).

Nine zoo models are little data for a leave-one-model-out fit: a held-out model whose layer
regime no other model shares is extrapolated. These networks fill the regimes in, in the
spirit of nn-Meter's sampled kernels (Zhang et al., MobiSys 2021): widths 8..256, resolutions
32..2, kernels 1/3/5, strides 1/2, plain convs, depthwise-separable and inverted-residual blocks
(with and without squeeze-excite), residual basic blocks, pooling, and small transformers
(patch embedding, layer norm, attention, GELU MLP). They are built from generic torch layers,
not from the zoo's classes, and their widths and depths are drawn at random, not copied from
any zoo model, so a zoo model held out of the fit is still unseen. Weights are random: latency
does not depend on them (dense kernels).

    synthetic_model(seed) -> nn.Module taking (1, 3, 32, 32), returning (1, 10)
"""

from __future__ import annotations

import random

import torch
from torch import nn

WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish)


def _cba(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, c: int, gate):
        super().__init__()
        r = max(8, c // 4)
        self.fc = nn.Sequential(nn.Conv2d(c, r, 1), nn.ReLU(), nn.Conv2d(r, c, 1), gate())

    def forward(self, x):  # x: (B, c, H, W)
        return x * self.fc(x.mean((2, 3), keepdim=True))


class _InvRes(nn.Module):
    def __init__(self, cin, cout, expand, k, stride, act, se):
        super().__init__()
        hid = cin * expand
        body = [_cba(cin, hid, 1, act=act)] if expand != 1 else []
        body.append(_cba(hid, hid, k, stride, groups=hid, act=act))
        if se:
            body.append(_SE(hid, nn.Hardsigmoid if act is nn.Hardswish else nn.Sigmoid))
        body.append(_cba(hid, cout, 1, act=None))
        self.body = nn.Sequential(*body)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = _cba(cin, cout, 3, stride)
        self.b = _cba(cout, cout, 3, act=None)
        self.short = (
            nn.Identity() if stride == 1 and cin == cout else _cba(cin, cout, 1, stride, act=None)
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.a(x)) + self.short(x))


class _ConvNet(nn.Module):
    def __init__(self, rng: random.Random):
        super().__init__()
        act = rng.choice(ACTS)
        hw, c = 32, rng.choice(WIDTHS[:6])
        stride = rng.choice((1, 2))
        blocks = [_cba(3, c, 3, stride, act=act)]
        hw //= stride
        for _ in range(rng.randint(1, 6)):
            kind = rng.choice(("conv", "dwsep", "invres", "invres", "basic", "pool"))
            stride = 2 if hw > 2 and rng.random() < 0.35 else 1
            cout = rng.choice(WIDTHS)
            if kind == "conv":
                blocks.append(_cba(c, cout, rng.choice((1, 3, 3, 5)), stride, act=act))
            elif kind == "dwsep":
                blocks += [
                    _cba(c, c, rng.choice((3, 5)), stride, groups=c, act=act),
                    _cba(c, cout, 1, act=act),
                ]
            elif kind == "invres":
                if stride == 1 and rng.random() < 0.5:
                    cout = c
                blocks.append(
                    _InvRes(
                        c,
                        cout,
                        rng.choice((1, 2, 4, 6)),
                        rng.choice((3, 5)),
                        stride,
                        act,
                        rng.random() < 0.4,
                    )
                )
            elif kind == "basic":
                blocks.append(_Basic(c, cout, stride))
            else:
                cout, stride = c, (2 if hw > 2 else 1)
                blocks.append(rng.choice((nn.MaxPool2d, nn.AvgPool2d))(stride))
            c, hw = cout, hw // stride
        self.features = nn.Sequential(*blocks)
        head = []
        if rng.random() < 0.4:
            hidden = rng.choice(WIDTHS[4:] + (512, 1024))
            head = [nn.Linear(c, hidden), act()]
            c = hidden
        self.head = nn.Sequential(*head, nn.Linear(c, 10))

    def forward(self, x):  # x: (1, 3, 32, 32)
        return self.head(self.features(x).mean((2, 3)))


class _Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):  # x: (B, N, d)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, d, heads, ratio):
        super().__init__()
        self.n1, self.attn, self.n2 = nn.LayerNorm(d), _Attention(d, heads), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, d * ratio), nn.GELU(), nn.Linear(d * ratio, d))

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


class _Transformer(nn.Module):
    def __init__(self, rng: random.Random):
        super().__init__()
        heads = rng.choice((1, 2, 4))
        d = heads * rng.choice((16, 32, 48))
        p = rng.choice((2, 4, 8))
        self.embed = nn.Conv2d(3, d, p, p)
        self.blocks = nn.Sequential(
            *[_Block(d, heads, rng.choice((2, 4))) for _ in range(rng.randint(1, 4))]
        )
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):  # x: (1, 3, 32, 32)
        t = self.embed(x).flatten(2).transpose(1, 2)  # (1, N, d)
        return self.head(self.norm(self.blocks(t)).mean(1))


def synthetic_model(seed: int) -> nn.Module:
    """A random network (seeded: the same seed builds the same architecture and weights)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    net = _Transformer(rng) if rng.random() < 0.2 else _ConvNet(rng)
    return net.eval()


def synthetic_names(n: int) -> list[str]:
    return [f"syn{i:03d}" for i in range(n)]


def is_synthetic(name: str) -> bool:
    return name.startswith("syn") and name[3:].isdigit()


def build(name: str) -> nn.Module:
    """A zoo model (seed 0, 3x32x32, 10 classes) or a synthetic one by its name."""
    if is_synthetic(name):
        return synthetic_model(int(name[3:]))
    import models

    torch.manual_seed(0)
    return models.create_model(name, 3, 10, 32).eval()
