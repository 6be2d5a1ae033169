"""The runnable examples in the arseg.losses docstrings stay runnable."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "arseg.losses.sampling",
    "arseg.losses.affinity",
    "arseg.losses.functional",
    "arseg.losses.modules",
    "arseg.losses.schedule",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
