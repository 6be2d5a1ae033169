"""The loss-term registry the engine builds its objective from."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from arseg import losses
from arseg.losses import LOSS_TERMS, LossTerm, check_term_options, loss_term


def test_the_five_terms_and_their_entries():
    assert list(LOSS_TERMS) == ["ar", "lovasz", "rmi", "aaf", "dice"]
    ar = loss_term("ar")
    assert ar.fn is losses.ar_loss and ar.native_logits
    assert dict(ar.defaults) == {
        "scales": (12, 6),
        "method": "auto",
        "kernel": "sqrt",
        "objective": "mse",
    }
    expected_fns = {
        "lovasz": losses.lovasz_softmax_loss,
        "rmi": losses.rmi_loss,
        "aaf": losses.aaf_loss,
        "dice": losses.dice_loss,
    }
    for name, fn in expected_fns.items():
        term = loss_term(name)
        assert term.name == name and term.fn is fn
        # AAF at the network's output resolution, as its reference; the others at the labels'
        assert term.native_logits == (name == "aaf")
    with pytest.raises(TypeError):
        LOSS_TERMS["new"] = ar  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        ar.name = "other"
    assert isinstance(ar, LossTerm)


@pytest.mark.parametrize("name", ["ar", "lovasz", "rmi", "aaf", "dice"])
def test_defaults_are_the_functions_own(name):
    term = loss_term(name)
    params = inspect.signature(term.fn).parameters
    options = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
    options.pop("ignore_index")
    options.pop("reduction")
    options.pop("weight", None)  # AR's per-pixel weights: mmseg's, not a term option
    assert options == dict(term.defaults)
    assert params["reduction"].default == "mean"


@pytest.mark.parametrize("name", ["ar", "lovasz", "rmi", "aaf", "dice"])
def test_every_term_runs_with_its_checked_options(name):
    term = loss_term(name)
    options = check_term_options(name, {})
    gen = torch.Generator().manual_seed(0)
    size = (12, 16) if term.native_logits else (48, 64)
    logits = torch.randn(2, 5, *size, generator=gen, requires_grad=True)
    target = torch.randint(0, 5, (2, 48, 64), generator=gen)
    target[0, :8] = 255
    value = term.fn(logits, target, ignore_index=255, **options)
    assert value.shape == () and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(logits.grad).all()


def test_check_term_options_merges_and_validates():
    assert check_term_options("rmi", {"radius": 2}) == {
        "radius": 2,
        "pool_size": 3,
        "pool_stride": 3,
        "bce_weight": 0.5,
        "eps": 5e-4,
    }
    merged = check_term_options("ar", {"scales": [12, 6], "objective": "bce"})
    assert merged["objective"] == "bce" and merged["kernel"] == "sqrt"
    assert check_term_options("aaf", {"sizes": [1, 2]})["sizes"] == [1, 2]  # YAML lists work
    with pytest.raises(ValueError, match="valid options: smooth, per_image") as info:
        check_term_options("dice", {"smoothing": 1.0})
    assert "\n" not in str(info.value)
    for name, options in (
        ("lovasz", {"ignore_index": 0}),  # the caller's, not an option
        ("ar", {"reduction": "sum"}),
    ):
        with pytest.raises(ValueError, match="unknown option"):
            check_term_options(name, options)
    bad_values = [
        ("ar", {"scales": (0, 6)}, ValueError),
        ("ar", {"method": "fast"}, ValueError),
        ("ar", {"kernel": "cubic"}, ValueError),
        ("ar", {"objective": "l1"}, ValueError),
        ("lovasz", {"per_image": "no"}, TypeError),
        ("rmi", {"radius": 0}, ValueError),
        ("rmi", {"bce_weight": 2.0}, ValueError),
        ("rmi", {"eps": -1.0}, ValueError),
        ("aaf", {"sizes": (0,)}, ValueError),
        ("aaf", {"margin": -3.0}, ValueError),
        ("aaf", {"class_weights": [1.0, -1.0]}, ValueError),
        ("dice", {"smooth": -1.0}, ValueError),
    ]
    for name, options, error in bad_values:
        with pytest.raises(error):
            check_term_options(name, options)


def test_unknown_term_names_the_known_ones():
    with pytest.raises(ValueError, match="known terms: ar, lovasz, rmi, aaf, dice"):
        loss_term("focal")
    with pytest.raises(ValueError, match="unknown loss term"):
        check_term_options("focal", {})


@pytest.mark.parametrize("align_corners", [True, False])
def test_composite_resizes_to_the_labels_with_the_models_align_corners(align_corners):
    """CE and every term that takes label-size logits see them resized with the convention the
    composite was given (the model's: True for PSPNet and ICNet), not always False."""
    import torch.nn.functional as F

    from arseg.losses import CompositeLoss

    gen = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(2, 4, 6, 8, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 24, 32), generator=gen)
    target[0, :4] = 255
    terms = {"lovasz": {}, "rmi": {}, "dice": {}, "ar": {}}
    criterion = CompositeLoss(terms, align_corners=align_corners)
    out = criterion(logits, target, dict.fromkeys(terms, 1.0))

    def resized(corners):
        return F.interpolate(logits, size=(24, 32), mode="bilinear", align_corners=corners)

    up, other = resized(align_corners), resized(not align_corners)
    ce = F.cross_entropy(up, target, ignore_index=255)
    torch.testing.assert_close(out.ce, ce)
    assert not torch.isclose(F.cross_entropy(other, target, ignore_index=255), ce)
    for name in ("lovasz", "rmi", "dice"):
        expected = loss_term(name).fn(up, target)
        torch.testing.assert_close(out.terms[name], expected)
        torch.testing.assert_close(criterion.term(name, logits, target), expected)
        assert not torch.isclose(loss_term(name).fn(other, target), expected), name
    torch.testing.assert_close(out.terms["ar"], losses.ar_loss(logits, target))  # native logits
