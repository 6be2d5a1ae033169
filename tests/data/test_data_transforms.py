"""Joint transforms: alignment, label values, padding, shapes and input checks."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from arseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
    denormalize,
)

STEP = 20  # image intensity per label value in the "label drawn from the image" tests


def blocky_pair(
    height: int, width: int, block: int, seed: int
) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """A label of random square blocks (values 0..9) and an image that *is* the label * STEP."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 10, (height // block + 1, width // block + 1), generator=g)
    label = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width]
    image = (label * STEP).to(torch.uint8).expand(3, height, width).clone()
    return tv_tensors.Image(image), tv_tensors.Mask(label.to(torch.uint8))


def label_from_image(x: torch.Tensor) -> torch.Tensor:
    return torch.round(denormalize(x)[0] * 255 / STEP).long()


def edge_free_agreement(x: torch.Tensor, y: torch.Tensor, radius: int) -> float:
    """Share of labelled pixels of ``y`` (H, W) whose value the image ``x`` (3, H, W) shows,
    over the pixels whose (2 radius + 1)^2 neighbourhood in ``y`` holds one label only (the
    image's interpolation and blur soften block edges, nothing else)."""
    m, k = y[None].float(), 2 * radius + 1
    pool = torch.nn.functional.max_pool2d
    flat = (pool(m, k, 1, radius) == -pool(-m, k, 1, radius))[0] & (y != 255)
    assert flat.float().mean() > 0.2  # enough pixels to judge
    return float((label_from_image(x)[flat] == y[flat]).float().mean())


@pytest.mark.parametrize("seed", range(6))
def test_crop_and_flip_keep_image_and_label_exactly_aligned(seed):
    image, mask = blocky_pair(70, 90, block=5, seed=seed)
    torch.manual_seed(seed)
    x, y = build_train_transform(crop_size=(48, 64), scale_range=None)(image, mask)
    assert x.shape == (3, 48, 64) and y.shape == (48, 64)
    assert torch.equal(label_from_image(x), y)


@pytest.mark.parametrize("seed", range(6))
def test_scaling_keeps_image_and_label_aligned(seed):
    # Interpolation softens block edges in the image by one pixel, so compare one pixel away
    # from them, exactly: a label shifted by one pixel (or read with PyTorch's corner-based
    # "nearest" instead of at the pixel centres) mismatches there (measured 0.92-0.99).
    image, mask = blocky_pair(96, 128, block=8, seed=seed)
    torch.manual_seed(seed)
    x, y = build_train_transform(crop_size=64, scale_range=(0.5, 2.0))(image, mask)
    assert edge_free_agreement(x, y, radius=1) == 1.0


def test_flip_happens_and_is_applied_to_both():
    image, mask = blocky_pair(32, 32, block=4, seed=0)
    transform = build_train_transform(crop_size=32, scale_range=None, hflip=True)
    flipped = kept = 0
    for seed in range(20):
        torch.manual_seed(seed)
        x, y = transform(image, mask)
        assert torch.equal(label_from_image(x), y)
        if torch.equal(y, mask.flip(-1).long()):
            flipped += 1
        elif torch.equal(y, mask.long()):
            kept += 1
    assert flipped > 0 and kept > 0 and flipped + kept == 20


@pytest.mark.parametrize("seed", range(10))
def test_train_transform_never_creates_label_values(seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([0, 3, 7, 200], dtype=torch.uint8)
    label = values[torch.randint(0, 4, (37, 53), generator=g)]
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=g)
    torch.manual_seed(seed)
    _, y = build_train_transform(crop_size=41, scale_range=(0.3, 2.5))(
        tv_tensors.Image(image), tv_tensors.Mask(label)
    )
    assert y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 3, 7, 200, 255}


def test_crop_larger_than_image_pads_label_with_ignore_and_image_with_mean():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    label = torch.randint(0, 5, (20, 30), dtype=torch.uint8)
    torch.manual_seed(0)
    x, y = build_train_transform(crop_size=(40, 50), scale_range=None, hflip=False)(
        tv_tensors.Image(image), tv_tensors.Mask(label)
    )
    assert x.shape == (3, 40, 50)
    pad = y == 255
    assert int(pad.sum()) == 40 * 50 - 20 * 30
    # The padded image is the mean colour, i.e. ~0 after normalisation (uint8 rounding).
    assert x[:, pad].abs().max() < 0.01
    # The original content is there, unchanged, at some offset.
    rows, cols = torch.nonzero(~pad, as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    assert torch.equal(y[top : top + 20, left : left + 30], label.long())


def test_eval_full_image_is_exact_normalisation():
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    label = torch.randint(0, 9, (17, 23), dtype=torch.uint8)
    x, y = build_eval_transform()(tv_tensors.Image(image), tv_tensors.Mask(label))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (image.float() / 255 - mean) / std)
    assert y.dtype == torch.int64 and torch.equal(y, label.long())
    assert type(x) is torch.Tensor and type(y) is torch.Tensor


def nearest_exact(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``mask`` (H, W) read at the input pixel holding each output pixel's centre (int64)."""
    (height, width), (h, w) = mask.shape, size
    rows = ((torch.arange(h) + 0.5) * height / h).floor().long()
    cols = ((torch.arange(w) + 0.5) * width / w).floor().long()
    return mask.long()[rows][:, cols]


@pytest.mark.parametrize(
    ("resize", "expected"), [((24, 40), (24, 40)), (30, (30, 50)), ((23, 37), (23, 37))]
)
def test_eval_resize_uses_nearest_for_labels(resize, expected):
    # (23, 37): factors 2.6 and 2.7, where PyTorch's shifted "nearest" (floor(i * H / h), the
    # output pixel's corner) reads other pixels than the centre rule the image follows.
    image, mask = blocky_pair(60, 100, block=10, seed=1)
    x, y = build_eval_transform(resize=resize)(image, mask)
    assert x.shape == (3, *expected) and y.shape == expected
    assert torch.equal(y, nearest_exact(mask, expected))
    # the image, bilinear with half-pixel centres, agrees with that label inside the blocks
    m = mask[None].float()
    pool = torch.nn.functional.max_pool2d
    flat = (pool(m, 7, 1, 3) == -pool(-m, 7, 1, 3))[0]  # 7x7 neighbourhood of a single value
    inside = nearest_exact(flat, expected).bool()
    assert (label_from_image(x)[inside] == y[inside]).float().mean() > 0.99


def test_plain_tensors_are_accepted():
    x, y = build_eval_transform()(
        torch.zeros(3, 8, 8, dtype=torch.uint8), torch.ones(8, 8, dtype=torch.int64)
    )
    assert x.shape == (3, 8, 8) and torch.equal(y, torch.ones(8, 8, dtype=torch.int64))


def test_denormalize_inverts_normalisation_and_handles_batches():
    image = torch.rand(2, 3, 5, 7)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(denormalize((image - mean) / std), image)
    assert denormalize(torch.full((3, 2, 2), 10.0)).max() == 1.0
    with pytest.raises(TypeError, match="float"):
        denormalize(torch.zeros(3, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="shape"):
        denormalize(torch.zeros(4, 2, 2))


def test_bad_inputs_raise_clear_errors():
    t = build_eval_transform()
    with pytest.raises(TypeError, match="uint8"):
        t(torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        t(torch.zeros(4, 4, 4, dtype=torch.uint8), torch.zeros(4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="mask"):
        t(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="sizes differ"):
        t(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(4, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="positive"):
        build_train_transform(crop_size=0)
    with pytest.raises(TypeError, match="crop_size"):
        build_train_transform(crop_size=(1, 2, 3))
    with pytest.raises(ValueError, match="scale_range"):
        build_train_transform(crop_size=8, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        build_eval_transform(resize=-1)


def test_read_image_scales_16_bit_grey_and_converts_other_modes(tmp_path):
    import numpy as np
    from PIL import Image

    from arseg.data.base import read_image

    grey16 = np.array([[0, 257, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert read_image(tmp_path / "g16.png").tolist() == [[[0] * 3, [1] * 3, [255] * 3]]
    # 8-bit content in a wide container stays as it is
    Image.fromarray(np.array([[0, 200, 255]], dtype=np.uint16)).save(tmp_path / "g8in16.png")
    assert read_image(tmp_path / "g8in16.png")[0, :, 0].tolist() == [0, 200, 255]
    Image.fromarray(np.array([[0, 200, 100000]], dtype=np.int32)).save(tmp_path / "i32.tif")
    assert read_image(tmp_path / "i32.tif")[0, :, 0].tolist() == [0, 1, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert read_image(tmp_path / "rgba.png").shape == (1, 2, 3)


def test_min_short_side_floors_the_random_scale():
    """LW-RefineNet's ResizeShorterScale: scale ~ U(lo, hi), raised to min_short_side / short."""
    from arseg.data.transforms import RandomScale

    image, mask = blocky_pair(48, 64, block=8, seed=0)
    sizes = set()
    for seed in range(30):
        torch.manual_seed(seed)
        out = RandomScale((0.25, 1.0), min_short_side=24)(image, mask)[1].shape
        sizes.add(tuple(out))
        assert out[0] >= 24 and out[0] / out[1] == pytest.approx(48 / 64, abs=0.03)  # rounding
    assert (24, 32) in sizes  # draws below 0.5 land on the floor
    assert any(h > 24 for h, _ in sizes)  # draws above it are kept
    with pytest.raises(ValueError, match="min_short_side"):
        RandomScale((0.5, 2.0), min_short_side=0)


@pytest.mark.parametrize("seed", range(4))
def test_rotation_and_blur_keep_labels_aligned_and_never_invent_values(seed):
    image, mask = blocky_pair(96, 128, block=16, seed=seed)
    transform = build_train_transform(
        crop_size=64, scale_range=None, rotate_degrees=10.0, blur_prob=1.0
    )
    torch.manual_seed(seed)
    x, y = transform(image, mask)
    assert set(y.unique().tolist()) <= set(mask.unique().tolist()) | {255}
    # blur (5x5) and rotation soften block edges by two pixels; beyond them the image shows the
    # label (measured >= 0.999; a label shifted by one pixel: 0.97-1.0 depending on the seed)
    assert edge_free_agreement(x, y, radius=2) > 0.995


def test_blur_probability_one_blurs_every_image_and_never_the_label():
    image, mask = blocky_pair(48, 64, block=8, seed=0)
    plain = build_train_transform(crop_size=(48, 64), scale_range=None, hflip=False)
    blurred = build_train_transform(crop_size=(48, 64), scale_range=None, hflip=False, blur_prob=1)
    x0, y0 = plain(image, mask)
    steps = denormalize(x0)[0] * 255 / STEP
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # unblurred: on the label grid
    visible = 0
    for seed in range(10):
        torch.manual_seed(seed)
        x, y = blurred(image, mask)
        assert torch.equal(y, y0)  # the label is never blurred
        steps = denormalize(x)[0] * 255 / STEP
        # edges blended; a sigma drawn near v2's lower bound 0.1 leaves uint8 pixels unchanged
        visible += bool(((steps - steps.round()).abs() > 0.05).float().mean() > 0.02)
        assert edge_free_agreement(x, y, radius=2) == 1.0  # and it moved nothing
    assert visible >= 8  # blurred every time (p = 0.5 would show about 5 of 10)


def test_rotation_fills_the_corners_with_ignore():
    image, mask = blocky_pair(64, 64, block=8, seed=0)
    transform = build_train_transform(
        crop_size=64, scale_range=None, rotate_degrees=30.0, hflip=False
    )
    rotated = 0
    for seed in range(8):
        torch.manual_seed(seed)
        _, y = transform(image, mask)
        rotated += bool((y == 255).any())
    assert 0 < rotated < 8  # applied with probability 0.5
    with pytest.raises(ValueError, match="rotate_degrees"):
        build_train_transform(crop_size=8, rotate_degrees=-1)
    with pytest.raises(ValueError, match="blur_prob"):
        build_train_transform(crop_size=8, blur_prob=2)
