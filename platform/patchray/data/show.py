"""``patchray dataset show``: what a dataset holds, and a contact sheet to look at it.

Counts come from the manifest and are cross-checked against the Parquet footers (see
:func:`patchray.data.validate.check_dataset`); the contact sheet shows evenly spaced sample
patches per class at their native size, so a wrong label mapping or a stain that should not
be there is seen before a model is trained on it.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from patchray import storage
from patchray.data.manifest import Manifest, PatchDataset, SplitInfo
from patchray.data.records import ALL_SPLITS, decode_record_image, label_key
from patchray.data.validate import check_dataset, open_parquet

SHEET_NAME = "contact_sheet.png"
SHEET_COLUMNS = 12
SHEET_ROWS = 2
PATIENTS_SHOWN = 10


@dataclass(frozen=True)
class ShowResult:
    text: str
    sheet_uri: str


def label_columns(splits: Mapping[str, SplitInfo]) -> list[str]:
    keys = {k for info in splits.values() for k in info.labels}
    return sorted(keys, key=lambda k: (k == "null", k))


def format_summary(root: str, manifest: Manifest, *, all_patients: bool = False) -> str:
    """The manifest's counts per split, label and patient as a small table."""
    splits = {s: manifest.splits[s] for s in ALL_SPLITS if s in manifest.splits}
    labels = label_columns(splits)
    names = {**manifest.class_names, "null": "unlabelled"}
    rule = manifest.split_rule.get("by", "?")
    lines = [
        f"dataset {root} ({manifest.dataset}, "
        f"schema {manifest.schema_version}, encoding: {manifest.encoding}, "
        f"split by {rule}, content sha256 {(manifest.content_sha256 or '?')[:12]})",
        f"{'split':<11}{'rows':>8}{'patients':>10}"
        + "".join(f"{'label ' + k:>12}" for k in labels),
    ]
    total: dict[str, int] = defaultdict(int)
    for split, info in splits.items():
        row = [info.rows, len(info.patients)] + [info.labels.get(k, 0) for k in labels]
        lines.append(f"{split:<11}{row[0]:>8}{row[1]:>10}" + "".join(f"{v:>12}" for v in row[2:]))
        for k in labels:
            total[k] += info.labels.get(k, 0)
    patients = {p for info in splits.values() for p in info.patients}
    lines.append(f"{'all':<11}{sum(i.rows for i in splits.values()):>8}{len(patients):>10}"
                 + "".join(f"{total[k]:>12}" for k in labels))
    lines.append("classes: " + ", ".join(f"{k} = {names.get(k, '?')}" for k in labels))
    if manifest.counts is not None:
        c = manifest.counts
        lines.append(
            f"ingest: seen {c.seen}, written {c.written}, rejected {c.rejected}, "
            f"ignored {c.ignored} (report: {storage.join(root, manifest.report or '')})"
        )
        nominal = manifest.nominal_size
        lines.append(
            f"undersized patches: {manifest.undersized_patches}"
            + (f" (smaller than {nominal[0]}x{nominal[1]})" if nominal else "")
            + "; sizes (HxW): " + ", ".join(f"{k}: {v}" for k, v in manifest.patch_sizes.items())
        )
    lines.append("patients per split (patches):")
    for split, info in splits.items():
        items = list(info.patients.items())
        shown = items if all_patients else items[:PATIENTS_SHOWN]
        hidden = len(items) - len(shown)
        more = f" ... +{hidden} more (--all-patients)" if hidden else ""
        lines.append(f"  {split}: " + (", ".join(f"{p} ({n})" for p, n in shown) or "-") + more)
    return "\n".join(lines)


SAMPLE_COLUMNS = ["image", "label", "patient_id", "height", "width", "source"]


def sample_rows(dataset: PatchDataset, per_class: int) -> dict[str, list[dict]]:
    """Up to ``per_class`` rows per label, evenly spaced over the whole dataset.

    Only the label column of every file and the row groups holding the chosen rows are
    read, so this stays cheap on datasets far larger than memory."""
    root = dataset.root
    files = [name for _, name in dataset.files()]
    where: dict[str, list[tuple[int, int]]] = defaultdict(list)  # label -> (file, row)
    for f, name in enumerate(files):
        labels = open_parquet(root, name).read(columns=["label"]).column("label").to_pylist()
        for row, label in enumerate(labels):
            where[label_key(label)].append((f, row))
    wanted: dict[tuple[int, int], str] = {}
    for key, positions in where.items():
        k = min(per_class, len(positions))
        picks = np.unique(np.linspace(0, len(positions) - 1, k).round())
        wanted.update({positions[int(i)]: key for i in picks})
    samples: dict[str, list[dict]] = defaultdict(list)
    for f in sorted({f for f, _ in wanted}):
        pf = open_parquet(root, files[f])
        start = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            rows = [r for r in range(start, start + n) if (f, r) in wanted]
            if rows:
                group = pf.read_row_group(g, columns=SAMPLE_COLUMNS).to_pylist()
                for r in rows:
                    samples[wanted[(f, r)]].append(group[r - start])
            start += n
    return dict(samples)


def render_contact_sheet(
    samples: Mapping[str, list[dict]], *, class_names: Mapping[str, str], counts: Mapping[str, int],
    title: str, encoding: str = "png",
) -> Image.Image:
    """Bands of SHEET_ROWS x SHEET_COLUMNS patches per class, at native size on grey cells
    (an undersized edge patch shows as a smaller tile, as it is stored)."""
    pixels = {k: [decode_record_image(r["image"], encoding, r["height"], r["width"],
                                      source=r["source"]) for r in rows]
              for k, rows in samples.items()}
    largest = max((max(p.shape[:2]) for ps in pixels.values() for p in ps), default=50)
    scale = 2 if largest <= 64 else 1
    cell, gap, header = largest * scale, 4, 22
    font = ImageFont.load_default(size=14)
    width = SHEET_COLUMNS * (cell + gap) + gap
    bands = sorted(pixels, key=lambda k: (k == "null", k))
    rows = {k: min(SHEET_ROWS, -(-len(pixels[k]) // SHEET_COLUMNS)) for k in bands}
    height = header + sum(header + rows[k] * (cell + gap) for k in bands) + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 3), title, fill="black", font=font)
    top = header
    for key in bands:
        name = "unlabelled" if key == "null" else f"label {key}: {class_names.get(key, '?')}"
        draw.text((gap, top + 3), f"{name}  ({counts.get(key, 0)} patches, "
                  f"{len(pixels[key])} shown)", fill="black", font=font)
        for i, patch in enumerate(pixels[key][: SHEET_ROWS * SHEET_COLUMNS]):
            x = gap + (i % SHEET_COLUMNS) * (cell + gap)
            y = top + header + (i // SHEET_COLUMNS) * (cell + gap)
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(200, 200, 200))
            h, w = patch.shape[:2]
            tile = Image.fromarray(patch).resize((w * scale, h * scale), Image.NEAREST)
            sheet.paste(tile, (x, y))
        top += header + rows[key] * (cell + gap)
    return sheet


def show_dataset(root: str, *, out: str | None = None, all_patients: bool = False) -> ShowResult:
    """Summarise the dataset at ``root`` and write its contact sheet (default: beside it)."""
    dataset = PatchDataset.open(root)
    manifest = dataset.manifest
    check_dataset(dataset)
    per_class = SHEET_ROWS * SHEET_COLUMNS
    samples = sample_rows(dataset, per_class)
    counts: dict[str, int] = defaultdict(int)
    for info in manifest.splits.values():
        for k, v in info.labels.items():
            counts[k] += v
    sheet = render_contact_sheet(
        samples, class_names=manifest.class_names, counts=counts,
        encoding=manifest.encoding,
        title=f"{root}  ({manifest.dataset}, split by {manifest.split_rule.get('by', '?')})",
    )
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    sheet_uri = out or storage.join(root, SHEET_NAME)
    storage.write_bytes(sheet_uri, buf.getvalue())
    text = format_summary(root, manifest, all_patients=all_patients)
    text += "\nrow counts match the Parquet footers; patients are disjoint across splits"
    return ShowResult(text=f"{text}\ncontact sheet: {sheet_uri}", sheet_uri=sheet_uri)
