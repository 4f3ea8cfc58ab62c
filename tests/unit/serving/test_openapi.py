"""The committed OpenAPI description is the one the routes generate."""

from __future__ import annotations

import json

from tests.conftest import REPO


def test_committed_openapi_matches_the_routes():
    from patchray.serving.openapi import render

    committed = (REPO / "serve" / "openapi.json").read_text()
    assert committed == render(), ("serve/openapi.json is stale: run "
                                   "`python -m patchray.serving.openapi`")
    doc = json.loads(committed)
    classify = doc["paths"]["/v1/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {
        "image/png", "image/jpeg", "multipart/form-data", "application/json"}
    assert {"401", "413", "415", "422"} <= set(classify["responses"])
    assert doc["paths"]["/healthz"]["get"]["security"] == []
