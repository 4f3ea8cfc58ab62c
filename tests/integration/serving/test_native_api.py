"""/v1/classify over real HTTP against Ray Serve: every input form, TTA, the review band."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from tests.integration.serving.conftest import encode, tissue

pytestmark = pytest.mark.integration


def _probabilities(answer: dict) -> np.ndarray:
    return np.array([p["probability"] for p in answer["predictions"]])


def test_one_png_patch_gets_an_answer_naming_the_model(service):
    r = service.classify(encode(tissue()))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"request_id", "model", "threshold", "review_band", "tta",
                           "predictions"}
    assert answer["model"]["name"] == service.model
    assert answer["model"]["version"] == service.version
    assert answer["model"]["precision"] in ("f32", "bf16", "int8")
    assert len(answer["model"]["sha256"]) == 64
    assert len(answer["request_id"]) == 32
    (patch,) = answer["predictions"]
    assert 0.0 <= patch["probability"] <= 1.0
    assert patch["label"] == int(patch["probability"] >= answer["threshold"])


def test_format_is_read_from_the_bytes_not_the_header(service):
    png = service.classify(encode(tissue())).json()
    as_jpeg_header = service.classify(encode(tissue()), "image/jpeg").json()
    octet = service.classify(encode(tissue()), "application/octet-stream").json()
    assert _probabilities(png) == pytest.approx(_probabilities(as_jpeg_header), abs=1e-6)
    assert _probabilities(png) == pytest.approx(_probabilities(octet), abs=1e-6)
    jpeg = service.classify(encode(tissue(), "JPEG"), "image/jpeg")
    assert jpeg.status_code == 200, jpeg.text


def test_edge_patches_are_padded_as_in_training(service):
    from patchray.data.transforms import PAD_VALUE

    edge = tissue()[:32]
    padded = np.full((50, 50, 3), PAD_VALUE, dtype=np.uint8)
    padded[:32] = edge
    a = _probabilities(service.classify(encode(edge)).json())
    b = _probabilities(service.classify(encode(padded)).json())
    assert a == pytest.approx(b, abs=1e-6)


def test_multipart_and_base64_json_give_the_same_answers_in_order(service):
    patches = [encode(tissue(seed=s)) for s in range(3)]
    singles = np.concatenate([_probabilities(service.classify(p).json()) for p in patches])
    files = [("files", (f"slide-{i}.png", p, "image/png")) for i, p in enumerate(patches)]
    r = requests.post(f"{service.url}/v1/classify", files=files, headers=service.headers(),
                      timeout=60)
    assert r.status_code == 200, r.text
    assert _probabilities(r.json()) == pytest.approx(singles, abs=1e-6)
    body = {"instances": [{"image_b64": base64.b64encode(p).decode()} for p in patches]}
    r = requests.post(f"{service.url}/v1/classify", json=body, headers=service.headers(),
                      timeout=60)
    assert r.status_code == 200, r.text
    assert _probabilities(r.json()) == pytest.approx(singles, abs=1e-6)


def test_test_time_augmentation_is_the_mean_over_eight_views(service):
    from patchray.serving.answers import tta_views

    patch = tissue(seed=7)
    views = tta_views(patch[None])
    body = {"instances": [{"image_b64": base64.b64encode(encode(v)).decode()} for v in views]}
    each = _probabilities(requests.post(f"{service.url}/v1/classify", json=body,
                                        headers=service.headers(), timeout=60).json())
    assert len(each) == 8
    r = service.classify(encode(patch), params={"tta": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["tta"] is True
    assert _probabilities(r.json())[0] == pytest.approx(each.mean(), abs=1e-5)
    plain = service.classify(encode(patch)).json()
    assert plain["tta"] is False
    r = service.classify(encode(patch), params={"tta": "perhaps"})
    assert r.status_code == 422 and r.json()["field"] == "tta"


def test_needs_review_marks_the_band_around_the_threshold(service):
    patches = [encode(tissue(seed=s)) for s in range(40)]
    files = [("files", (f"p{i}.png", p, "image/png")) for i, p in enumerate(patches)]
    answer = requests.post(f"{service.url}/v1/classify", files=files,
                           headers=service.headers(), timeout=60).json()
    from patchray.serving.answers import review_band

    low, high = answer["review_band"]
    assert (low, high) == pytest.approx(review_band(answer["threshold"],
                                                    service.args.review_margin))
    for p in answer["predictions"]:
        assert p["needs_review"] == (low <= p["probability"] <= high)


def test_the_skeleton_route_still_answers_one_patch(service):
    r = requests.post(f"{service.url}/v1/predict", data=encode(tissue()), timeout=60,
                      headers=service.headers(**{"Content-Type": "image/png"}))
    assert r.status_code == 200, r.text
    flat = r.json()
    assert flat["model"] == service.model and flat["model_version"] == service.version
    assert {"probability", "label", "label_name", "needs_review", "threshold"} <= set(flat)


def test_split_topology_gives_the_fused_services_answers(service):
    """``topology: split`` (a Classifier deployment behind the ingress) beside the session's
    fused service on the same Serve instance: same patches, same answers, and the model
    really lives in its own deployment."""
    from ray import serve

    from patchray.serving.app import build_app

    assert service.args.topology == "fused"
    split = service.args.model_copy(update={"topology": "split"})
    serve.run(build_app(split), name="split-check", route_prefix="/split-check")
    try:
        status = serve.status().applications["split-check"]
        assert set(status.deployments) == {"Ingress", "Classifier"}, status.deployments
        fused_only = serve.status().applications
        assert not any("Classifier" in a.deployments for n, a in fused_only.items()
                       if n != "split-check"), "the session's service should be fused"
        files = [("files", (f"p{k}.png", encode(tissue(seed=k)), "image/png"))
                 for k in range(6)]
        answers = [requests.post(f"{base}/v1/classify", files=files, timeout=60,
                                 headers=service.headers()).json()
                   for base in (service.url, f"{service.url}/split-check")]
    finally:
        serve.delete("split-check")
    fused, via_split = answers
    assert via_split["model"] == fused["model"]
    assert _probabilities(via_split) == pytest.approx(_probabilities(fused), abs=1e-6)
