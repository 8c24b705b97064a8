"""TinyViT, the image encoder of MobileSAM and LiteMedSAM, written for this package.

Both models put a small TinyViT (5 M parameters) in front of SAM v1's own prompt encoder and mask decoder. The
module names and parameter shapes here are those of their checkpoint files (``image_encoder.layers.1.blocks.0.
attn.qkv.weight``, ...), so ``mobile_sam.pt`` and LiteMedSAM's ``lite_medsam.pth`` load strictly, and a merged
model saves back into their layout. Unlike their code, this encoder

- runs at any frame whose sides are multiples of its stride (the grid of every stage is read from the input,
  not fixed at build time), so a MobileSAM model trains at 256 px and deploys at 1024 px like SAM's ViT;
- computes its windowed attention with ``scaled_dot_product_attention`` (``fused``, on by default; the explicit
  softmax path is kept for comparison), the learned relative-position bias as the attention mask;
- recomputes its blocks in the backward when ``use_checkpointing`` asks (``models.attention.Recomputed``);
- keeps its batch norms' running statistics in training (``train``);
- runs its convolutions channels-last (faster on a CPU; the same numbers).

The two variants differ in the patch embedding: MobileSAM's two 3x3 stride-2 convolutions (1024 px -> 256x256
tokens, embedding stride 16), LiteMedSAM's two 1x1 stride-1 ones (256 px -> 256x256 tokens, stride 4), and
MobileSAM's file carries the ImageNet classifier of TinyViT's pretraining (``norm_head``, ``head``), kept as
unused parameters so that the file loads strictly. Stages: MBConv blocks, then three stages of windowed
attention blocks; a patch merging between stages halves the grid, except the last merging, which keeps it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import Tensor, nn

from lora_sam.models.attention import Recomputed
from lora_sam.models.sam_v1.sizes import TinyViTConfig

__all__ = ["TinyViT", "TinyViTConfig", "is_tiny_vit", "use_tiny_vit_checkpointing", "use_tiny_vit_fused_attention"]


class ConvBN(nn.Sequential):
    """A convolution without bias and its batch norm (``c``, ``bn``: the files' names)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bn_weight: float = 1.0) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        nn.init.constant_(self.bn.weight, bn_weight)
        nn.init.zeros_(self.bn.bias)


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(cin, dim // 2, kernel, stride), nn.GELU(), ConvBN(dim // 2, dim, kernel, stride))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, 3x3 depthwise, 1x1 projection (its batch norm starts at zero)."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1, self.act1 = ConvBN(dim, hidden), nn.GELU()
        self.conv2, self.act2 = ConvBN(hidden, hidden, 3, groups=hidden), nn.GELU()
        self.conv3, self.act3 = ConvBN(hidden, dim, bn_weight=0.0), nn.GELU()

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        return self.act3(x + self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))


class PatchMerging(nn.Module):
    """Channels to ``out_dim``, then a depthwise 3x3 convolution of stride ``stride``; (B, C, H, W) in and out."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


def _offset_index(window: int) -> Tensor:
    """(N, N) index into the bias table of each pair of a window's N = window^2 positions: the table holds one
    entry per offset (|dy|, |dx|), at dy * window + dx (the order in which TinyViT's files store them)."""
    pos = torch.arange(window * window)
    dy = (pos[:, None] // window - pos[None, :] // window).abs()
    dx = (pos[:, None] % window - pos[None, :] % window).abs()
    return dy * window + dx


class Attention(nn.Module):
    """Multi-head attention over one window of tokens, with a learned bias per head and relative offset."""

    fused = True

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", _offset_index(window), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C)
        b, n, _ = x.shape
        # the files' qkv layout: per head, its q, k and v one after the other
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, N, N)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = ((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5 + bias).softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded to whole windows), a depthwise 3x3 convolution, an MLP; (B, H, W, C)."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s = self.window
        ph, pw = -h % s, -w % s
        windows = F.pad(x, (0, 0, 0, pw, 0, ph)) if ph or pw else x
        nh, nw = (h + ph) // s, (w + pw) // s
        windows = windows.view(b, nh, s, nw, s, c).transpose(2, 3).reshape(b * nh * nw, s * s, c)
        attended = self.attn(windows).view(b, nh, nw, s, s, c).transpose(2, 3).reshape(b, nh * s, nw * s, c)
        x = x + attended[:, :h, :w]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class _CheckpointedTinyViTBlock(Recomputed, TinyViTBlock):
    """A TinyViT attention block, recomputed in the backward."""


class _CheckpointedMBConv(Recomputed, MBConv):
    """An MBConv block, recomputed in the backward."""


class ConvLayer(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, out_dim: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, H', W', C')
        for block in self.blocks:
            x = block(x)
        return self.downsample(x).permute(0, 2, 3, 1)


class BasicLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int,
                 out_dim: int | None, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size)
                                    for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> (B, H', W', C')
        for block in self.blocks:
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class TinyViT(nn.Module):
    """TinyViT as SAM's image encoder: (B, 3, H, W) normalised pixels -> (B, out_chans, H / stride, W / stride)."""

    def __init__(self, config: TinyViTConfig | None = None, img_size: int = 1024) -> None:
        super().__init__()
        self.config = config = config or TinyViTConfig()  # MobileSAM's by default
        self.img_size = img_size  # the side of the model's own frame: SamPredictor resizes and pads to it
        dims, stages = config.embed_dims, len(config.embed_dims)
        self.patch_embed = PatchEmbed(3, dims[0], *config.patch_kernel)
        self.layers = nn.ModuleList()
        for i in range(stages):
            out_dim = dims[i + 1] if i + 1 < stages else None
            stride = 1 if i + 2 == stages else 2  # the merging into the last stage keeps the grid
            if i == 0:
                self.layers.append(ConvLayer(dims[0], config.depths[0], config.mbconv_expand_ratio, dims[1], stride))
            else:
                self.layers.append(BasicLayer(dims[i], config.depths[i], config.num_heads[i], config.window_sizes[i],
                                              config.mlp_ratio, config.local_conv_size, out_dim, stride))
        if config.classifier:  # TinyViT's ImageNet head: in MobileSAM's file, never run
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], 1000)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, 1, bias=False), LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, 3, padding=1, bias=False), LayerNorm2d(config.out_chans),
        )
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def stride(self) -> int:
        return self.config.stride

    def train(self, mode: bool = True) -> TinyViT:
        """Train mode for everything but the batch norms, which keep their running statistics (fine-tuning
        batches of a few images would replace them with noisy ones, LoRA or not; their scale and shift still
        train under full fine-tuning)."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ValueError(f"TinyViT needs image sides that are multiples of {self.stride}, got {tuple(x.shape[-2:])}")
        # channels-last from the start: the convolutions run faster so on a CPU, and the stages' (B, H, W, C) views
        # of the conv outputs are then contiguous
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x.permute(0, 3, 1, 2))


def use_tiny_vit_fused_attention(encoder: TinyViT, enabled: bool = True) -> None:
    """The windowed attention through ``scaled_dot_product_attention`` (``enabled``) or an explicit softmax."""
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.fused = enabled


def use_tiny_vit_checkpointing(encoder: TinyViT, enabled: bool = True) -> None:
    """Every block's activations recomputed in the backward (``enabled``) or kept."""
    for module in encoder.modules():
        if isinstance(module, TinyViTBlock):
            module.__class__ = _CheckpointedTinyViTBlock if enabled else TinyViTBlock
        elif isinstance(module, MBConv):
            module.__class__ = _CheckpointedMBConv if enabled else MBConv


def is_tiny_vit(sam: nn.Module) -> bool:
    """Whether ``sam``'s image encoder is a TinyViT (MobileSAM, LiteMedSAM)."""
    return isinstance(getattr(sam, "image_encoder", None), TinyViT)
