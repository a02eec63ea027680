"""VGG-11 with batch norm (Simonyan & Zisserman 2015, config A) at half width for 32x32 inputs.

Widths 32-64-128-128-256-256-256-256 (the paper's 64...512 halved), a global average pool and one
linear layer instead of the three 4096-wide fully connected layers, as CIFAR variants do. A
max-pool is skipped once the feature map is 1x1, so small inputs (8x8 digits) work too.
"""

from torch import nn

from models._registry import register_model

_VGG11_HALF = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M")


class VGG(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, input_size: int, cfg=_VGG11_HALF):
        super().__init__()
        layers, cin, size = [], in_channels, input_size
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [
                nn.Conv2d(cin, v, 3, padding=1, bias=False),
                nn.BatchNorm2d(v),
                nn.ReLU(inplace=True),
            ]
            cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):  # x: (B, C, H, W)
        x = self.pool(self.features(x))  # (B, 256, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)


@register_model("vgg_small", "VGG-11-BN at half width (32..256), global pool, one linear head")
def vgg_small(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return VGG(in_channels, num_classes, input_size)
