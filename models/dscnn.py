"""DS-CNN for keyword spotting (Zhang et al. 2017, "Hello Edge"), the small (S) configuration.

Input is a spectrogram-shaped tensor (B, C, T, F), e.g. (B, 1, 49, 10) MFCCs: a 10x4 conv with
stride 2, four depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, BN and ReLU after each),
global average pool and a linear head; 64 channels throughout. The layers are padded so that any
(C, T, F) works, square images included.
"""

from torch import nn

from models._registry import register_model


def _ds_block(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),  # depthwise
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 1, bias=False),  # pointwise
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
    )


class DSCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64, blocks: int = 4):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, (10, 4), stride=2, padding=(5, 1), bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(*[_ds_block(width) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):  # x: (B, C, T, F)
        x = self.blocks(self.stem(x))  # (B, 64, T/2+1, F/2)
        return self.classifier(self.pool(x).flatten(1))  # (B, num_classes)


@register_model("dscnn", "DS-CNN-S keyword-spotting net (Hello Edge), 64 ch, any (C, T, F) input")
def dscnn(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return DSCNN(in_channels, num_classes)
