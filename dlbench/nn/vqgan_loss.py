"""VQGAN training objective (Esser et al. 2021, "Taming Transformers", Sec. 3.1 and Eq. 4-7).

Pure functions plus the patch discriminator they are used with:

- :func:`hinge_d_loss` -- discriminator hinge loss ``0.5 (E relu(1 - D(x)) + E relu(1 + D(x_hat)))``;
- :func:`hinge_g_loss` -- generator adversarial loss ``-E D(x_hat)``;
- :func:`adaptive_weight` -- Eq. 7, ``lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta)``
  at the decoder's last layer ``G_L``, clamped to ``[0, 1e4]`` and detached;
- :func:`adopt_weight` -- the delayed discriminator start (factor 0 before ``start`` steps);
- :class:`PatchDiscriminator` -- the pix2pix PatchGAN (``n_layers`` strided 4x4 convs, BatchNorm,
  LeakyReLU 0.2), laid out as in taming-transformers (``main.<i>``) so its weights can be imported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: delta of Eq. 7 (keeps lambda finite when the adversarial gradient vanishes)
ADAPTIVE_EPS = 1e-4
#: upper clamp of lambda (taming-transformers' value)
ADAPTIVE_MAX = 1e4


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))``; logits ``"b 1 h w"`` (any shape)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-mean(D(x_hat))``."""
    return -logits_fake.mean()


def adopt_weight(weight: float, step: int, start: int) -> float:
    """The discriminator factor at ``step``: ``0`` before ``start`` (reconstruction-only warm-up), then ``weight``."""
    return 0.0 if step < start else weight


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    eps: float = ADAPTIVE_EPS, max_value: float = ADAPTIVE_MAX) -> torch.Tensor:
    """Eq. 7 of Esser et al.: ratio of gradient norms of the two losses at ``last_layer`` (detached).

    Both losses must depend on ``last_layer`` through a graph that is still alive; the graph is kept
    (``retain_graph``) so the caller can backpropagate the total loss afterwards.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    lam = g_rec.norm() / (g_gan.norm() + eps)
    return lam.clamp(0.0, max_value).detach()


class PatchDiscriminator(nn.Module):
    """PatchGAN ``"b c H W" -> "b 1 h w"`` logits (pix2pix; taming's ``NLayerDiscriminator`` layout).

    ``n_layers`` stride-2 4x4 convs doubling the width up to ``8 * channels``, one stride-1 conv, then a
    1-channel stride-1 conv; each patch logit sees a 70x70 receptive field at ``n_layers=3``.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _dcgan_init(m: nn.Module) -> None:
    """DCGAN init (N(0, 0.02) convs, N(1, 0.02) norm scales), as pix2pix and taming use."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
