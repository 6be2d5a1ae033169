"""Cell-centre sampling: the convention, and that logits and labels meet at the same points."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arseg.losses import cell_centre_indices, label_affinity, normalize_scales
from arseg.losses.sampling import sample_positions


@pytest.mark.parametrize(
    ("size", "grid"), [(8, 2), (360, 12), (45, 12), (480, 6), (7, 3), (3, 6), (1, 4)]
)
def test_indices_match_nearest_exact_interpolation(size, grid):
    # PyTorch's "nearest-exact" (PIL convention) is an independent implementation of the rule.
    ramp = torch.arange(size, dtype=torch.float64).view(1, 1, size)
    expected = F.interpolate(ramp, size=grid, mode="nearest-exact").view(-1).long()
    assert cell_centre_indices(size, grid).tolist() == expected.tolist()


def test_indices_are_cell_centres_not_torch_nearest():
    # 8 pixels, 2 cells: centres at 2 and 6; torch "nearest" would take 0 and 4.
    assert cell_centre_indices(8, 2).tolist() == [2, 6]
    ramp = torch.arange(8.0).view(1, 1, 8)
    assert F.interpolate(ramp, size=2, mode="nearest").view(-1).tolist() == [0.0, 4.0]


@pytest.mark.parametrize("factor", [4, 8])
def test_label_sampled_inside_paired_logit_cell(factor):
    # For every grid and resolution ratio, the label pixel lies in the logit cell it is paired with.
    h, w = 11, 17
    big_h, big_w = h * factor, w * factor
    for gh, gw in [(12, 12), (6, 6), (5, 9), (11, 17), (30, 40)]:
        logit_rows = cell_centre_indices(h, gh)
        label_rows = cell_centre_indices(big_h, gh)
        logit_cols = cell_centre_indices(w, gw)
        label_cols = cell_centre_indices(big_w, gw)
        assert torch.equal(torch.div(label_rows, factor, rounding_mode="floor"), logit_rows)
        assert torch.equal(torch.div(label_cols, factor, rounding_mode="floor"), logit_cols)


def test_sample_positions_order_and_concatenation():
    x = torch.arange(16).view(1, 4, 4)
    out = sample_positions(x, [(2, 2), (1, 1), (4, 4)])
    assert out.shape == (1, 4 + 1 + 16)
    # 2x2 grid on 4 px -> rows/cols 1 and 3, row-major; 1x1 -> pixel (2, 2); 4x4 -> identity.
    assert out[0, :5].tolist() == [5, 7, 13, 15, 10]
    assert out[0, 5:].tolist() == list(range(16))


def test_normalize_scales_forms():
    assert normalize_scales((12, 6)) == [(12, 12), (6, 6)]
    assert normalize_scales(12) == [(12, 12)]
    assert normalize_scales([(4, 8), 2]) == [(4, 8), (2, 2)]
    assert normalize_scales(None) is None


@pytest.mark.parametrize("bad", [0, -3, (12, 0), [(4, -1)], ()])
def test_normalize_scales_rejects_non_positive(bad):
    with pytest.raises(ValueError, match=r"positive|at least one"):
        normalize_scales(bad)


@pytest.mark.parametrize("bad", ["12", 1.5, [(1, 2, 3)], [True], [None]])
def test_normalize_scales_rejects_wrong_types(bad):
    with pytest.raises(TypeError, match="scale"):
        normalize_scales(bad)


def test_label_affinity_small_case():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255], [2, 2, 255, 255]]])
    m, valid = label_affinity(target, scales=[2])
    assert valid.tolist() == [[True, True, True, False]]
    assert m[0].tolist() == [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    assert m.dtype == torch.float32


def test_label_affinity_full_resolution_follows_size():
    target = torch.randint(0, 3, (2, 16, 24))
    m, valid = label_affinity(target, scales=None, size=(4, 6))
    assert m.shape == (2, 24, 24) and valid.shape == (2, 24)
    m_own, _ = label_affinity(target, scales=None)
    assert m_own.shape == (2, 384, 384)


def test_label_affinity_memory_does_not_depend_on_label_values():
    """Raw ids (e.g. instance-style 10**9) are compared pairwise, not one-hot encoded."""
    target = torch.tensor([[[10**9, 7], [255, 10**9]]])
    m, valid = label_affinity(target, scales=None)
    assert valid.tolist() == [[True, True, False, True]]
    assert m[0].tolist() == [
        [1.0, 0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 1.0],
    ]
