"""The fast FID extractor: torch-fidelity's Inception-v3, the same network folded and fused for inference.

Batch norm is folded into the convolutions and ReLU fused (:func:`fold_conv_bn`, :class:`FusedConvReLU`);
``exact`` mode stays within 1e-4 of torch-fidelity's own extractor, ``bf16`` runs the convolutions in
bfloat16 (its FID deviation is measured, :func:`dlbench.eval.backends.bf16_fid_deviation`). Weights come
from :func:`dlbench.eval.inception.resolve_inception_weights`.
"""

from __future__ import annotations

import warnings

import torch

from dlbench.eval.inception import InceptionWeights, InceptionWeightsError, build_inception

__all__ = ["FEATURE_MODES", "FidInception", "FusedConvReLU", "build_fid_inception", "fold_conv_bn"]

#: ``exact``: fp32 (or fp64), features within 1e-4 of torch-fidelity's; ``bf16``: the fast mode, the
#: convolutions in bfloat16 (its FID deviation is measured, ``dlbench.eval.backends.bf16_fid_deviation``)
FEATURE_MODES = ("exact", "bf16")

_POOL3_PATH = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)


def fold_conv_bn(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference-time BN folded into the conv: ``W' = W * g / sqrt(v + eps)`` (per output channel) and
    ``b' = beta - mu * g / sqrt(v + eps)``, so ``bn(conv(x)) == conv'(x)`` up to float rounding.
    Computed in float64 and returned in the conv's dtype. Shapes ``"o i kh kw"``, ``"o"``."""
    scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
    weight = conv.weight.double() * scale[:, None, None, None]
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def _pointwise_conv_available() -> bool:
    """oneDNN's fused conv + ReLU (``torch.ops.mkldnn._convolution_pointwise``, what Inductor emits on CPU)."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        x = torch.zeros(1, 2, 3, 3).contiguous(memory_format=torch.channels_last)
        y = op(x, torch.ones(2, 2, 1, 1), torch.zeros(2), [0, 0], [1, 1], [1, 1], 1, "relu", [None], "")
        return tuple(y.shape) == (1, 2, 3, 3) and torch.backends.mkldnn.is_available()
    except Exception:  # noqa: BLE001 - an optional kernel: fall back to conv + relu
        return False


class FusedConvReLU(torch.nn.Module):
    """torch-fidelity's ``BasicConv2d`` (conv -> BN(eps 1e-3) -> ReLU) as one conv with the BN folded in
    (:func:`fold_conv_bn`) and, on CPU, the ReLU fused into oneDNN's kernel. ``"b i h w" -> "b o h' w'"``."""

    def __init__(self, basic: torch.nn.Module, dtype: torch.dtype, fused_kernel: bool):
        super().__init__()
        conv = basic.conv
        weight, bias = fold_conv_bn(conv, basic.bn)
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", bias.to(dtype))
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.fused_kernel = fused_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_kernel and x.device.type == "cpu":
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, "relu", [None], ""
            )
        return torch.relu_(torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding))


class FidInception(torch.nn.Module):
    """torch-fidelity's FID Inception for inference: uint8 ``"b 3 H W"`` -> pool3 ``"b 2048"`` (float32),
    plus ``"b 1008"`` unbiased logits when asked.

    Same weights, same resize (torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``, run once
    per distinct channel: gray images are resized once), same ``(x - 128) / 128``; BN folded into the
    convs, ReLU fused, channels-last activations (oneDNN's preferred layout), no autograd. ``mode="exact"``
    keeps float32 (or ``dtype=float64``); ``mode="bf16"`` runs the convolutions in bfloat16 (fast on CPUs
    with avx512_bf16/AMX and on GPUs) and returns float32 features.
    """

    def __init__(self, net: torch.nn.Module, mode: str = "exact", dtype: torch.dtype = torch.float32):
        super().__init__()
        if mode not in FEATURE_MODES:
            raise InceptionWeightsError(f"feature mode {mode!r}: choose one of {', '.join(FEATURE_MODES)}")
        self.mode = mode
        self.dtype = torch.bfloat16 if mode == "bf16" else dtype
        import copy

        body = copy.deepcopy(net).to(torch.float32)
        fused = _pointwise_conv_available() and self.dtype != torch.float64
        for name, module in list(body.named_modules()):
            for child_name, child in list(module.named_children()):
                if child.__class__.__name__ == "BasicConv2d":
                    setattr(module, child_name, FusedConvReLU(child, self.dtype, fused))
        self.body = body.eval().requires_grad_(False)
        self.register_buffer("fc_weight", net.fc.weight.detach().float().clone())

    @staticmethod
    def resize(x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``"b 3 H W"`` -> float32 ``"b 3 299 299"`` with torch-fidelity's TF1-compatible bilinear."""
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        gray = bool((x_u8[:, 0] == x_u8[:, 1]).all() and (x_u8[:, 0] == x_u8[:, 2]).all())
        src = x_u8[:, :1] if gray else x_u8
        with warnings.catch_warnings():  # its tensor-from-tensor construction warns on every call
            warnings.simplefilter("ignore", UserWarning)
            out = interpolate_bilinear_2d_like_tensorflow1x(src.float(), size=(299, 299), align_corners=False)
        return out.expand(-1, 3, -1, -1) if gray else out

    def forward(self, x_u8: torch.Tensor, logits: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(pool3 "b 2048", unbiased logits "b 1008" or None)``; input uint8 ``"b 3 H W"``."""
        if x_u8.dtype != torch.uint8 or x_u8.dim() != 4 or x_u8.shape[1] != 3:
            raise InceptionWeightsError(f"FID Inception expects uint8 'b 3 H W', got {x_u8.dtype} {tuple(x_u8.shape)}")
        with torch.inference_mode():
            x = (self.resize(x_u8) - 128) / 128
            x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            for name in _POOL3_PATH:
                x = getattr(self.body, name)(x)
            pool = torch.flatten(x, 1).float()
            out = None
            if logits:  # torch-fidelity's "logits_unbiased" (what its IS uses): fc without bias, float32
                out = pool @ self.fc_weight.T
            return pool, out


def build_fid_inception(weights: InceptionWeights, mode: str = "exact", *, float64: bool = False) -> FidInception:
    """:class:`FidInception` from resolved weights (``float64`` only in exact mode, for the fp64 protocol)."""
    net = build_inception(weights, ("2048",))
    return FidInception(net, mode, torch.float64 if float64 else torch.float32)
