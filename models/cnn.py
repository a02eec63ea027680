"""Small plain CNNs: the default model for the bundled digits data."""

from torch import nn

from models._registry import register_model


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks, one 2x2 max-pool, global average pool, linear head.

    Widths are multiples of 8 so that structured pruning with round_to=8 keeps them
    XNNPACK-friendly. Global pooling is `AdaptiveAvgPool2d(1)`, not `x.mean((2, 3))`, because
    the XNNPACK delegate does not take a keepdim=False mean.
    """

    def __init__(self, in_channels: int, num_classes: int, widths=(32, 64, 64, 128)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w1),
            _conv_bn_relu(w1, w2),
            nn.MaxPool2d(2),
            _conv_bn_relu(w2, w3),
            _conv_bn_relu(w3, w4),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w4, num_classes)

    def forward(self, x):  # x: (B, C, H, W)
        x = self.pool(self.features(x))  # (B, w4, 1, 1)
        return self.classifier(x.flatten(1))  # (B, num_classes)


@register_model("small_cnn", "4-block plain CNN (32-64-64-128), the default for digits")
def small_cnn(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return SmallCNN(in_channels, num_classes)
