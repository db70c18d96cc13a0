"""gtnpipe.training.augment: the transforms' statistics, not only their shapes.

Images whose pixel values encode their own coordinates show where each output pixel came from: the share of the
image a random-resized-crop kept, its aspect ratio, whether it was flipped.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gtnpipe.config.recipes import TrainConfig
from gtnpipe.training.augment import color_jitter, crop_flip, resized_crop_flip
from gtnpipe.training.train import augment_batch

N, H, W = 2000, 32, 48


def _coordinates(n: int = N, h: int = H, w: int = W) -> torch.Tensor:
    """Channel 0: the column (0..w-1) scaled to [0, 255]; channel 1: the row; channel 2: constant 128."""
    cols = torch.linspace(0, 255, w).view(1, 1, 1, w).expand(n, 1, h, w)
    rows = torch.linspace(0, 255, h).view(1, 1, h, 1).expand(n, 1, h, w)
    return torch.cat([cols, rows, torch.full((n, 1, h, w), 128.0)], dim=1)


def _boxes(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the kept box's width and height as shares of the image's, and whether it is mirrored."""
    cols, rows = out[:, 0], out[:, 1]
    # a box of share b of the width spans b * (W - 1) source pixels between its first and last output pixel centres,
    # and a source pixel is 255 / (W - 1) of value: the value span is b * 255
    width = (cols[:, :, -1] - cols[:, :, 0]).abs().mean(1) / 255
    height = (rows[:, -1, :] - rows[:, 0, :]).mean(1) / 255
    mirrored = cols[:, 0, -1] < cols[:, 0, 0]
    return width, height, mirrored


def test_resized_crop_of_the_whole_image_is_the_identity() -> None:
    x = torch.randint(0, 256, (8, 3, H, W), dtype=torch.uint8)
    out = resized_crop_flip(x, scale=(1.0, 1.0), ratio=(W / H, W / H), generator=torch.Generator().manual_seed(0))
    mirrored = _boxes(resized_crop_flip(_coordinates(8), scale=(1.0, 1.0), ratio=(W / H, W / H),
                                        generator=torch.Generator().manual_seed(0)))[2]
    expected = torch.where(mirrored[:, None, None, None], x.flip(3), x).float()
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


def test_resized_crop_keeps_the_asked_share_and_aspect_and_flips_half() -> None:
    scale, ratio = (0.25, 1.0), (0.75, 4 / 3)
    out = resized_crop_flip(_coordinates(), scale=scale, ratio=ratio, generator=torch.Generator().manual_seed(1))
    assert out.shape == (N, 3, H, W)
    width, height, mirrored = _boxes(out)
    # a box's bilinear samples span (size - 1) of its size: allow one source pixel of slack
    area = width * height
    assert area.min() >= scale[0] * 0.9 and area.max() <= 1.0 + 1e-3
    aspect = (width * W) / (height * H)
    inside = (width < 0.99) & (height < 0.99)  # boxes not clipped at the image's edge keep the drawn ratio
    assert aspect[inside].min() >= ratio[0] * 0.93 and aspect[inside].max() <= ratio[1] * 1.07
    # log-uniform ratio: on a square image (where clipping cuts wide and tall boxes alike) its log's mean is the
    # middle of the log range
    square = resized_crop_flip(_coordinates(N, 40, 40), scale=scale, ratio=ratio, generator=torch.Generator().manual_seed(7))
    cols, rows = square[:, 0], square[:, 1]
    sq_w, sq_h = (cols[:, :, -1] - cols[:, :, 0]).abs().mean(1), (rows[:, -1, :] - rows[:, 0, :]).mean(1)
    unclipped = (sq_w < 0.99 * 255) & (sq_h < 0.99 * 255)
    log_aspect = torch.log(sq_w[unclipped] / sq_h[unclipped])
    assert abs(float(log_aspect.mean()) - (math.log(ratio[0]) + math.log(ratio[1])) / 2) < 0.015  # SE ~0.004
    # the mean kept share against the documented distribution, sampled independently here: area share ~ U(scale),
    # ratio log-uniform, each side clipped to the image
    rng = np.random.default_rng(0)
    s_, r_ = rng.uniform(*scale, 200_000), np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), 200_000)) * H / W
    expected = np.mean(np.minimum(np.sqrt(s_ * r_), 1) * np.minimum(np.sqrt(s_ / r_), 1))
    assert abs(float(area.mean()) - expected) < 0.02, (float(area.mean()), expected)
    assert 0.45 < float(mirrored.float().mean()) < 0.55
    # positions: box centres spread over the image, not stuck in the middle
    centre_x = out[:, 0, :, W // 2].mean(1) / 255
    assert float(centre_x.std()) > 0.1 and abs(float(centre_x.mean()) - 0.5) < 0.03
    # the same generator seed, the same crops
    again = resized_crop_flip(_coordinates(), scale=scale, ratio=ratio, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_crop_flip_shifts_by_at_most_the_padding() -> None:
    x = _coordinates(500)
    out = crop_flip(x, padding_px=3, generator=torch.Generator().manual_seed(2))
    step = 255 / (W - 1)
    cols = out[:, 0, H // 2]
    mirrored = cols[:, -4] < cols[:, 3]  # inside: a shifted crop's edge columns may be the zero padding
    inner = torch.where(mirrored[:, None], cols.flip(1), cols)[:, 3:-3]  # away from the zero padding
    shift = (inner[:, 0] - x[:, 0, H // 2, 3]) / step
    assert set(shift.round().int().tolist()) <= set(range(-3, 4)) and len(set(shift.round().int().tolist())) == 7
    assert 0.4 < float(mirrored.float().mean()) < 0.6


def test_color_jitter_factors_are_uniform_in_the_range_and_keep_grey_grey() -> None:
    grey = torch.full((N, 3, 4, 4), 100.0)
    out = color_jitter(grey, 0.4, generator=torch.Generator().manual_seed(3))
    factor = out[:, 0, 0, 0] / 100  # a flat image: contrast and saturation change nothing, brightness scales it
    assert torch.allclose(out, out[:, :1].expand_as(out))  # still grey
    assert factor.min() >= 0.6 - 1e-6 and factor.max() <= 1.4 + 1e-6
    assert abs(float(factor.mean()) - 1.0) < 0.02 and abs(float(factor.std()) - 0.8 / math.sqrt(12)) < 0.02
    # contrast: a two-level image's spread is scaled about its mean, within the range
    two = torch.cat([torch.full((N, 3, 4, 2), 60.0), torch.full((N, 3, 4, 2), 140.0)], dim=3)
    spread = color_jitter(two, 0.4, generator=torch.Generator().manual_seed(4))
    ratio = (spread[:, 0, 0, 3] - spread[:, 0, 0, 0]) / 80
    assert ratio.min() >= 0.6**2 - 1e-4 and ratio.max() <= 1.4**2 + 1e-4 and float(ratio.std()) > 0.1
    assert out.min() >= 0 and out.max() <= 255


def test_saturation_moves_colours_toward_or_away_from_grey() -> None:
    red = torch.zeros(N, 3, 2, 2)
    red[:, 0] = 200.0
    out = color_jitter(red, 0.5, generator=torch.Generator().manual_seed(5))
    chroma = out[:, 0] - out[:, 1]  # red minus green: 0 for a grey image
    assert float(chroma.std()) > 10 and (chroma > 0).all()  # sometimes more, sometimes less saturated, never inverted


@pytest.mark.parametrize("augment", ["none", "crop-flip", "resized-crop"])
def test_the_recipe_chooses_the_augmentation(augment: str) -> None:
    x = torch.randint(0, 256, (16, 3, H, W), dtype=torch.uint8)
    cfg = TrainConfig(epochs=1, augment=augment, color_jitter=0.0)  # type: ignore[arg-type]
    out = augment_batch(x, cfg, generator=torch.Generator().manual_seed(6)) if cfg.augments else x
    assert out.shape == x.shape and cfg.augments == (augment != "none")
    if augment == "none":
        assert torch.equal(out, x)
    jittered = TrainConfig(epochs=1, augment=augment, color_jitter=0.3)  # type: ignore[arg-type]
    assert jittered.augments
    assert not torch.equal(augment_batch(x, jittered, generator=torch.Generator().manual_seed(6)).float(), x.float())
