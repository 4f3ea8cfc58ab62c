"""Two concentric views of slide tiles (patchray.slides.multiscale), the two-view dataset
they make, and the training batch that keeps them aligned. No Ray, no TensorFlow."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from patchray.config import TilingConfig
from patchray.data.manifest import PatchDataset
from patchray.data.records import PATCH_SCHEMA, decode_image, patch_schema
from patchray.data.transforms import augment, prepare_training_batch
from patchray.data.validate import check_dataset
from patchray.errors import ConfigError, DataError
from patchray.slides.multiscale import (
    context_tile, read_context_tiles, read_views, write_multiscale_dataset,
)
from patchray.slides.reader import open_slide
from patchray.slides.synthetic import write_synthetic_slide
from patchray.slides.tiling import Tile

SIZE = 32


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three quarter-size synthetic slides (1024x768, levels x1 x4 x16), one per patient."""
    folder = tmp_path_factory.mktemp("ms-slides")
    return [write_synthetic_slide(folder / f"syn-m{i}.tif", width=1024, height=768, seed=i)
            for i in range(3)]


def _tile(x: int, y: int, side0: int = SIZE, level: int = 0) -> Tile:
    return Tile("s", "p", level, x, y, SIZE, SIZE, side0, 0.5, 1.0, None, None)


def test_context_is_concentric_and_covers_context_scale_times_the_side(slides):
    with open_slide(slides[0].path) as reader:
        for tile, scale in ((_tile(400, 300), 4), (_tile(128, 96), 2), (_tile(0, 0), 4),
                            (_tile(400, 320, side0=128, level=1), 4)):
            ctx = context_tile(reader, tile, scale, SIZE)
            assert ctx.side0 == scale * tile.side0
            assert (ctx.x + ctx.side0 / 2, ctx.y + ctx.side0 / 2) == \
                (tile.x + tile.side0 / 2, tile.y + tile.side0 / 2)
            # the coarsest level that still has a pixel per context pixel: never enlarged
            assert ctx.read_size >= SIZE and ctx.patch_size == SIZE
            assert reader.level_downsamples[ctx.level] == ctx.side0 / ctx.read_size
            assert ctx.mpp == pytest.approx(tile.mpp * scale)
        assert context_tile(reader, _tile(400, 300), 4, SIZE).level == 1  # 128 px / 32 = x4
        with pytest.raises(ConfigError, match="context_scale=1"):
            context_tile(reader, _tile(0, 0), 1, SIZE)


def test_views_show_the_same_centre(slides):
    """The context's middle quarter is the patch, shrunk 4x (read at level 1, which the
    writer shrank from level 0 its own way, so equal up to resampling)."""
    with open_slide(slides[0].path) as reader:
        tile = _tile(288, 320)  # inside the tumour of slide 0 (x 256..383, y 256..447)
        patch, context = read_views(reader, tile, 4, SIZE)
        assert patch.shape == context.shape == (SIZE, SIZE, 3)
        assert patch.dtype == context.dtype == np.uint8
        middle = context[12:20, 12:20].astype(np.float64)
        small = np.asarray(Image.fromarray(patch).resize((8, 8), Image.Resampling.BOX), float)
        assert np.abs(middle - small).mean() < 12
        # a context elsewhere (another centre) differs far more
        other = read_views(reader, _tile(600, 100), 4, SIZE)[1][12:20, 12:20].astype(float)
        assert np.abs(other - small).mean() > 2 * np.abs(middle - small).mean()
        many = read_context_tiles(reader, [tile, _tile(600, 100)], 4, SIZE)
        np.testing.assert_array_equal(many[0], context)


def test_context_beyond_the_slide_edge_is_white(slides):
    with open_slide(slides[0].path) as reader:
        _, context = read_views(reader, _tile(0, 0), 4, SIZE)
    # the context of the corner tile starts 48 level-0 px (12 context px) outside
    assert (context[:11, :, :] == 255).all() and (context[:, :11, :] == 255).all()


def test_dataset_has_both_views_split_by_patient_and_labels_by_the_centre_rule(
        slides, tmp_path):
    out = str(tmp_path / "ms")
    result = write_multiscale_dataset(
        [s.path for s in slides], out, tiling=TilingConfig(patch_size=SIZE, stride=64),
        context_scale=4, masks=slides[0].path.parent)
    ds = PatchDataset.open(out)
    assert ds.views == ("context_image",) and ds.context_scale == 4.0
    assert ds.manifest.dataset == "multiscale-slides"
    assert ds.manifest.source["context_scale"] == 4.0
    assert {s: len(ds.manifest.split(s).patients) for s in ("train", "val", "test")} == \
        {"train": 1, "val": 1, "test": 1}
    assert result.report.written == sum(ds.rows(s) for s in ("train", "val", "test"))
    check_dataset(ds)  # `dataset validate` accepts the extra column
    fs, paths = ds.split_files("train")
    table = pq.read_table(paths[0], filesystem=fs)
    assert table.schema.equals(patch_schema(["context_image"]))
    rows = table.to_pylist()
    box = slides[0].tumour_box  # (x0, y0, x1, y1) of every synthetic slide's tumour
    with open_slide(next(s.path for s in slides if s.path.stem == rows[0]["slide_id"])) as r:
        for row in rows[:: max(1, len(rows) // 10)]:
            tile = _tile(row["x"], row["y"])
            patch, context = read_views(r, tile, 4, SIZE)
            np.testing.assert_array_equal(decode_image(row["image"]), patch)
            np.testing.assert_array_equal(decode_image(row["context_image"]), context)
            cx, cy, side = row["x"] + 6, row["y"] + 6, 20  # the 0.625 centre of 32 px
            inside = cx < box[2] and cx + side > box[0] and cy < box[3] and cy + side > box[1]
            assert row["label"] == int(inside)
    assert sum(r["label"] for r in rows) >= 1  # the tumour is in every slide


def test_single_view_ingest_is_unchanged():
    assert patch_schema(()) is PATCH_SCHEMA
    with pytest.raises(DataError, match="unknown view column"):
        patch_schema(["nope"])


def test_training_batch_augments_both_views_with_the_same_draws():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    from patchray.data.records import encode_png

    images = np.array([encode_png(p) for p in pixels], dtype=object)
    batch = {"image": images, "context_image": images.copy(), "label": np.arange(6) % 2}
    kwargs = dict(size=SIZE, augment_patches=True, weights={0: 1.0, 1: 2.0}, seed=3)
    out = prepare_training_batch(batch, **kwargs)
    assert out["context"].shape == out["x"].shape and out["context"].dtype == np.uint8
    # identical inputs: identical outputs only if rotation, flip and colour draws are shared
    np.testing.assert_array_equal(out["x"], out["context"])
    assert not np.array_equal(out["x"], pixels)  # and they were augmented

    # A concentric pair stays concentric: a rotated/flipped context's middle is still the
    # (equally rotated/flipped) patch. Mark the patch's position in a white context.
    context = np.full_like(pixels, 255)
    context[:, 12:20, 12:20] = pixels[:, ::4, ::4]
    batch["context_image"] = np.array([encode_png(c) for c in context], dtype=object)
    out = prepare_training_batch(batch, **{**kwargs, "augment_strength": 0.0})
    for i in range(6):  # find how the patch moved; the context moved the same way
        moved = [np.rot90(pixels[i], k) for k in range(4)]
        moved += [m[:, ::-1] for m in moved]
        k = next(j for j, m in enumerate(moved) if np.array_equal(m, out["x"][i]))
        want = np.rot90(context[i], k % 4)
        want = want[:, ::-1] if k >= 4 else want
        np.testing.assert_array_equal(out["context"][i], want)

    # without a context column: exactly the single-view batch of before
    single = prepare_training_batch({"image": images, "label": batch["label"]}, **kwargs)
    assert "context" not in single
    from patchray.data.transforms import decode_patches, to_pixels

    want = to_pixels(augment(decode_patches(list(images), SIZE), np.random.default_rng(3)))
    np.testing.assert_array_equal(single["x"], want)
