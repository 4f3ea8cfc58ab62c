"""The served model's validation positive rate, read from its card (what drift is judged by)."""

from types import SimpleNamespace

from patchray.serving.metrics import validation_positive_rate


def card(**precisions):
    return SimpleNamespace(precisions={k: SimpleNamespace(val=v) for k, v in precisions.items()})


def test_validation_positive_rate_is_the_share_called_tumour_at_the_precisions_threshold():
    c = card(f32={"n": 200, "tp": 50, "fp": 30, "tn": 100, "fn": 20},
             int8={"n": 200, "tp": 52, "fp": 40, "tn": 90, "fn": 18})
    assert validation_positive_rate(c, "f32") == 80 / 200
    assert validation_positive_rate(c, "int8") == 92 / 200


def test_a_card_without_validation_counts_has_no_rate():
    assert validation_positive_rate(card(f32={}), "f32") is None
    assert validation_positive_rate(card(f32={"n": 0, "tp": 0, "fp": 0}), "f32") is None
    assert validation_positive_rate(card(), "bf16") is None
