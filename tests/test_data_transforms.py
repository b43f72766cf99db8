"""Pure image transforms: channel conversion, crop/pad/resize, decoding errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dlbench.data.errors import CorruptImageError
from dlbench.data.transforms import (
    center_crop_square,
    convert_channels,
    decode_image,
    fit_square,
    luma,
    pad_square,
)


def test_luma_matches_pil_convert_L_exactly():
    # PIL is the oracle: files converted by PIL and arrays converted here must agree bit for bit
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    got = luma(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy()
    np.testing.assert_array_equal(got, want)


def test_convert_channels_grey_rgb_rgba_and_rejects_others():
    grey = torch.arange(12, dtype=torch.uint8).reshape(1, 1, 3, 4)
    rgb = convert_channels(grey, 3)
    assert rgb.shape == (1, 3, 3, 4) and torch.equal(rgb[:, 0], rgb[:, 2]) and torch.equal(rgb[:, :1], grey)
    assert torch.equal(convert_channels(rgb, 1), grey)  # luma of equal channels is the grey value
    rgba = torch.cat([rgb, torch.full_like(grey, 7)], 1)
    assert torch.equal(convert_channels(rgba, 3), rgb)
    with pytest.raises(ValueError, match="2 channels"):
        convert_channels(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 3)


def test_pad_places_image_in_the_centre_with_zero_border():
    x = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    y = pad_square(x, 32)
    assert y.shape == (2, 1, 32, 32)
    assert y[:, :, 2:30, 2:30].eq(200).all() and y.sum() == 200 * 28 * 28 * 2
    with pytest.raises(ValueError, match="crop='pad'"):
        pad_square(x, 16)


def test_center_crop_takes_the_middle_square_then_resizes():
    # a 6 x 10 image whose columns hold their index: the central 6 x 6 square is columns 2..7
    x = torch.arange(10, dtype=torch.uint8).repeat(6, 1)[None, None]
    assert torch.equal(center_crop_square(x)[0, 0, 0], torch.arange(2, 8, dtype=torch.uint8))
    const = torch.full((1, 3, 40, 60), 77, dtype=torch.uint8)
    for mode in ("center", "resize"):
        out = fit_square(const, 16, mode)
        assert out.shape == (1, 3, 16, 16) and out.eq(77).all()  # constant stays constant (normalised filter)


def test_resize_differs_from_center_crop_on_non_square_input():
    x = torch.zeros(1, 1, 8, 16, dtype=torch.uint8)
    x[..., :4] = 255  # left quarter white: cropped away by center, squeezed in by resize
    assert fit_square(x, 8, "center")[..., :, 0].max() == 0
    assert fit_square(x, 8, "resize")[..., :, 0].min() == 255


def test_decode_image_names_the_source_of_garbage_and_truncation():
    with pytest.raises(CorruptImageError, match="photos/cat.png"):
        decode_image(b"not an image", "photos/cat.png", 3)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    with pytest.raises(CorruptImageError, match="half.png"):
        decode_image(buf.getvalue()[: len(buf.getvalue()) // 2], "half.png", 3)


def test_decode_16bit_png_keeps_top_byte_instead_of_clipping():
    arr = np.array([[0, 256, 65535, 32768]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = decode_image(buf.getvalue(), "x.png", 1)
    assert out.tolist() == [[[0, 1, 255, 128]]]
