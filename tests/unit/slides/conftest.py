"""One synthetic pyramidal slide per session (about 2 s to draw and write), shared read-only."""

from __future__ import annotations

import pytest

from patchray.slides.synthetic import SyntheticSlide, write_synthetic_slide


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory) -> SyntheticSlide:
    return write_synthetic_slide(tmp_path_factory.mktemp("slides") / "syn-p01.tif")
