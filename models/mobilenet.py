"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3-Small (Howard et al. 2019), CIFAR variants.

For 32x32 inputs the stem and the first downsampling stage run at stride 1, so the network
downsamples 8x (32 -> 4) instead of 32x, as CIFAR ports of both do. Channels are scaled by the
width multiplier and rounded with `_make_divisible(v, 8)`, so every width is a multiple of 8.
"""

from torch import nn

from models._registry import register_model


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never going down by more than 10%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_act(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6) -> nn.Sequential:
    layers = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return nn.Sequential(*layers, act(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise (stride) -> [squeeze-excite] -> 1x1 project (linear)."""

    def __init__(self, cin, hidden, cout, k=3, stride=1, se=False, act=nn.ReLU6):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers = [] if hidden == cin else [_conv_bn_act(cin, hidden, 1, act=act)]
        layers.append(_conv_bn_act(hidden, hidden, k, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers.append(_conv_bn_act(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):  # x: (B, cin, H, W)
        out = self.block(x)  # (B, cout, H/s, W/s)
        return x + out if self.use_res else out


class HardSigmoid(nn.Module):
    """h-sigmoid as the MobileNetV3 paper writes it, ReLU6(x + 3) / 6. `nn.Hardsigmoid` computes
    the same, but its ExecuTorch decomposition leaves two constant casts outside XNNPACK."""

    def forward(self, x):
        return nn.functional.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, _make_divisible(c / 4), 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(_make_divisible(c / 4), c, 1)
        self.gate = HardSigmoid()

    def forward(self, x):  # x: (B, c, H, W)
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))  # (B, c, 1, 1)
        return x * s  # (B, c, H, W)


# MobileNetV2: (expansion t, channels c, repeats n, stride s); stage-2 stride 2 -> 1 for CIFAR
_V2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, last: int = 1280):
        super().__init__()
        cin = _make_divisible(32 * width)
        layers = [_conv_bn_act(in_channels, cin, 3, stride=1)]  # stride 2 -> 1 for CIFAR
        for t, c, n, s in _V2:
            cout = _make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cin * t, cout, 3, s if i == 0 else 1))
                cin = cout
        last = _make_divisible(last * max(1.0, width))  # the paper keeps 1280 below width 1
        layers.append(_conv_bn_act(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):  # x: (B, C, H, W)
        x = self.pool(self.features(x))  # (B, last, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)


# MobileNetV3-Small: (kernel, expanded, out, SE, hard-swish, stride); first stride 2 -> 1 for CIFAR
_V3_SMALL = [
    (3, 16, 16, True, False, 1),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
]


class MobileNetV3Small(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, hidden: int = 1024):
        super().__init__()
        layers = [_conv_bn_act(in_channels, 16, 3, stride=1, act=nn.Hardswish)]  # stride 2 -> 1
        cin = 16
        for k, exp, cout, se, hs, s in _V3_SMALL:
            layers.append(
                InvertedResidual(cin, exp, cout, k, s, se, act=nn.Hardswish if hs else nn.ReLU)
            )
            cin = cout
        layers.append(_conv_bn_act(cin, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(576, hidden),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):  # x: (B, C, H, W)
        x = self.pool(self.features(x))  # (B, 576, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)


@register_model("mobilenetv2", "MobileNetV2 x0.5, CIFAR strides (downsamples 8x), 1280 last conv")
def mobilenetv2(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return MobileNetV2(in_channels, num_classes, width=0.5)


@register_model("mobilenetv2_100", "MobileNetV2 x1.0, CIFAR strides (downsamples 8x)")
def mobilenetv2_100(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return MobileNetV2(in_channels, num_classes, width=1.0)


@register_model("mobilenetv3_small", "MobileNetV3-Small x1.0 (SE, hard-swish), CIFAR strides")
def mobilenetv3_small(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return MobileNetV3Small(in_channels, num_classes)
