"""Calibration in the model card: stored per precision, round-tripped, rendered; a card
registered before calibration existed still loads and serves its raw output."""

from __future__ import annotations

import json

from patchray.evaluation.calibration import ECE, Calibration
from patchray.registry.card import parse_card, render_markdown
from tests.unit.registry.test_card import make_card

PLATT = Calibration(method="platt", a=1.3, b=-4.2, fitted_on="val", n=300,
                    ece={"val": ECE(before=0.41, after=0.03, n=300),
                         "test": ECE(before=0.39, after=0.05, n=280)})


def calibrated_card():
    card = make_card()
    precisions = {n: r.model_copy(update={"calibration": PLATT}) if n != "int8" else r
                  for n, r in card.precisions.items()}
    return card.model_copy(update={"precisions": precisions})


def test_a_calibration_round_trips_through_card_json():
    card = calibrated_card()
    back = parse_card(card.model_dump_json(), where="card.json")
    assert back.precisions["bf16"].calibration == PLATT
    assert back.calibration("auto") == PLATT and back.calibration("f32").a == 1.3
    assert back.precisions["int8"].calibration is None


def test_a_card_without_calibration_loads_and_serves_raw_output():
    doc = make_card().model_dump(mode="json")
    for record in doc["precisions"].values():
        record.pop("calibration")  # as written before calibration existed
    card = parse_card(json.dumps(doc), where="old/card.json")
    assert card.calibration("auto") is None and card.threshold("auto") == 0.40
    assert "Not calibrated: the probabilities served are the model's raw output" in \
        render_markdown(card)


def test_markdown_names_the_method_parameters_and_ece_per_precision():
    md = render_markdown(calibrated_card())
    assert "## Calibration" in md
    assert "| bf16 | platt a=1.3 b=-4.2 | val (300 patches) | 0.4100 -> 0.0300 | " \
           "0.3900 -> 0.0500 |" in md
    assert "| int8 | - (raw output) |" in md
    assert "the threshold above is on the calibrated scale" in md


def test_markdown_says_not_calibrated_when_every_fit_fell_back_to_raw():
    card = make_card()
    fallback = Calibration(method="none", fitted_on="val", n=120,
                           note="platt slope -0.017 <= 0 on val: not applied")
    precisions = {n: r.model_copy(update={"calibration": fallback})
                  for n, r in card.precisions.items()}
    md = render_markdown(card.model_copy(update={"precisions": precisions}))
    assert "Not calibrated: the probabilities served are the model's raw output" in md
    assert "| f32 | none (raw model output): platt slope -0.017 <= 0 on val: not applied |" in md
