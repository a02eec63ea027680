"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of basic blocks, widths 16/32/64.

ResNet-(6n+2): n blocks per stage, so n=3 gives ResNet-20 and n=9 gives ResNet-56. Shortcuts are
identity, or option B (1x1 conv + BN) where the shape changes; the paper's option A (zero-padded
strided identity) has no weights for structured pruning to follow and is not used here.
"""

from torch import nn

from models._registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:  # option B
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):  # x: (B, cin, H, W)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, cout, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, cout, H/s, W/s)
        return self.relu(out + self.shortcut(x))  # (B, cout, H/s, W/s)


class CifarResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, n: int, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):  # x: (B, C, H, W)
        x = self.layers(self.stem(x))  # (B, 64, H/4, W/4)
        return self.fc(self.pool(x).flatten(1))  # (B, num_classes)


@register_model("resnet20", "CIFAR ResNet-20 (He et al. 2016), widths 16/32/64, 1x1-conv shortcuts")
def resnet20(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CifarResNet(in_channels, num_classes, n=3)


@register_model("resnet56", "CIFAR ResNet-56 (He et al. 2016), widths 16/32/64, 1x1-conv shortcuts")
def resnet56(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return CifarResNet(in_channels, num_classes, n=9)
