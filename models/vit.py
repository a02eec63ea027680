"""A small vision transformer (Dosovitskiy et al. 2021): conv patch embedding, class token,
learned position embedding, pre-norm blocks, linear head on the class token.

`Attention` keeps one fused `qkv` linear and the attributes `num_heads` and `head_dim`, and
flattens heads with `reshape(B, N, -1)`, so torch-pruning can remove whole heads (give it
`num_heads={attn.qkv: attn.num_heads}`); afterwards set `attn.num_heads` from
`pruner.num_heads[attn.qkv]` and `attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models._registry import register_model


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5  # fixed: head pruning keeps head_dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # x: (B, N, D)
        B, N, _ = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x)  # (B, N, 3*h*d), laid out (3, h, d)
        # split by slicing the feature dim and batch the heads into 3-D bmm: XNNPACK takes
        # slices and bmm, while unbind (squeeze) and 4-D matmul (expand) stay outside it
        q, k, v = (
            qkv[..., i * h * d : (i + 1) * h * d]
            .reshape(B, N, h, d)
            .transpose(1, 2)
            .reshape(B * h, N, d)
            for i in range(3)
        )  # each (B*h, N, d)
        attn = torch.bmm(q * self.scale, k.transpose(1, 2))  # (B*h, N, N)
        x = torch.bmm(attn.softmax(dim=-1), v)  # (B*h, N, d)
        x = x.reshape(B, h, N, d).transpose(1, 2).reshape(B, N, -1)  # (B, N, h*d), not D
        return self.proj(x)  # (B, N, D)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x):  # x: (B, N, D)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))  # (B, N, D)


def _patch_size(input_size: int, max_grid: int = 8) -> int:
    """The smallest patch that divides the image and gives at most max_grid patches a side."""
    return next(
        p for p in range(1, input_size + 1) if input_size % p == 0 and input_size // p <= max_grid
    )


class ViT(nn.Module):
    def __init__(
        self, in_channels, num_classes, input_size, dim=64, depth=4, num_heads=4, mlp_ratio=4
    ):
        super().__init__()
        patch = _patch_size(input_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        num_patches = (input_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):  # x: (B, C, H, W)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), N = (H/p)*(W/p)
        # class token in slot 0: pad a zero token and add it, where cat(cls.expand(B, ...), x)
        # would leave an expand op outside XNNPACK
        x = F.pad(x, (0, 0, 1, 0))  # (B, N+1, D)
        x = x + self.pos_embed + F.pad(self.cls_token, (0, 0, 0, x.shape[1] - 1))  # (B, N+1, D)
        x = self.blocks(x)  # (B, N+1, D)
        return self.head(self.norm(x[:, :1]).flatten(1))  # class token -> (B, num_classes)


@register_model("vit_tiny", "ViT, dim 64, 4 heads, 4 blocks, patch size from input (<=8x8 grid)")
def vit_tiny(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return ViT(in_channels, num_classes, input_size)
