"""Catch sockets and files that a test forgot to close.

An unclosed socket warns (ResourceWarning) only when the garbage collector
finalises it, which may happen during a later test, or never. The
``no_resource_warnings`` fixture collects garbage right after its test and
fails that test if anything warned, so a leak is blamed on the test that
caused it. Use it with ``pytestmark = pytest.mark.usefixtures(
"no_resource_warnings")``.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture
def no_resource_warnings() -> Iterator[None]:
    """Fail the test if collecting its garbage raises a ResourceWarning."""
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
