"""Whole slides: readers (OpenSlide, tifffile), tissue masks, tiling and centre labels.

:mod:`~patchray.slides.reader` opens a slide behind one interface,
:mod:`~patchray.slides.tiling` turns it into labelled tile records, and
:mod:`~patchray.slides.synthetic` writes a small pyramidal TIFF with a known tumour for tests.
No Ray here (see README.md beside this file for how the Ray stages plug in).
"""
