"""Training-time augmentation on whole batches, in torch (torchvision has no CPU wheel here): vectorised, and
deterministic given the epoch's generator, so a resumed run replays the same images.

- `crop_flip`: zero-pad, random crop back to size, random horizontal flip (the CIFAR/Fashion-MNIST recipe).
- `resized_crop_flip`: random-resized-crop (Szegedy et al. 2015; torchvision's RandomResizedCrop): a box of a random
  share of the image's area and a random aspect ratio, at a random place, resized back to the image's size
  (bilinear), flipped horizontally half the time. One affine sampling grid for the whole batch.
- `color_jitter`: brightness, contrast and saturation, each scaled by a factor drawn from [1 - s, 1 + s] per image
  (torchvision's ColorJitter(s, s, s), in that fixed order; no hue).

Inputs are uint8 or float tensors of pixel values in [0, 255], (N, C, H, W); outputs are float in [0, 255] (what
`Normalizer` takes). Per-channel normalisation is `Normalizer`'s, after these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["color_jitter", "crop_flip", "resized_crop_flip"]

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's and torchvision's grayscale


def crop_flip(x: torch.Tensor, *, padding_px: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image."""
    n, _, h, w = x.shape
    if padding_px:
        padded = F.pad(x, (padding_px,) * 4)
        oy = torch.randint(0, 2 * padding_px + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * padding_px + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
        x = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def resized_crop_flip(x: torch.Tensor, *, scale: tuple[float, float], ratio: tuple[float, float],
                      generator: torch.Generator) -> torch.Tensor:
    """Per image: a box of area share ~ U(scale) and aspect ratio (width / height) log-uniform in `ratio`, clipped to
    the image, at a uniform position, resized to the image's size; mirrored with probability 1/2."""
    n, _, h, w = x.shape
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r) * (h / w)  # box width/height in pixels -> as fractions of the image's sides
    box_w = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the width and height
    box_h = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1 - box_w) * (2 * u[:, 2] - 1)  # the box's centre in [-1, 1] coordinates, box inside the image
    centre_y = (1 - box_h) * (2 * u[:, 3] - 1)
    flip = torch.rand(n, generator=generator) < 0.5
    theta = torch.zeros(n, 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = (box_w * (1 - 2 * flip.double())).float()  # a negative x scale mirrors the box
    theta[:, 0, 2] = centre_x.float()
    theta[:, 1, 1] = box_h.float()
    theta[:, 1, 2] = centre_y.float()
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, *, generator: torch.Generator) -> torch.Tensor:
    """Brightness, then contrast, then saturation (colour images only), each by a factor ~ U(1 - s, 1 + s) per
    image, clamped to [0, 255]. Contrast blends with the image's mean grey level, saturation with its grey image."""
    n, c = x.shape[:2]
    factors = 1 + strength * (2 * torch.rand(n, 3, 1, 1, 1, generator=generator) - 1)
    out = x.float() * factors[:, 0]
    out = out.clamp(0, 255)
    mean_grey = _grey(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean_grey) * factors[:, 1] + mean_grey).clamp(0, 255)
    if c == 3:
        grey = _grey(out)
        out = ((out - grey) * factors[:, 2] + grey).clamp(0, 255)
    return out


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)
