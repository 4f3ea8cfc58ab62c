"""Write the native API's OpenAPI description: ``python -m patchray.serving.openapi [PATH]``.

The committed copy (serve/openapi.json) is what integrators and the fuzzer read; a unit test
fails when the routes change and the copy was not regenerated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COMMITTED = "serve/openapi.json"


def render() -> str:
    from patchray.serving.ingress import openapi_document

    doc: dict[str, Any] = openapi_document()
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else COMMITTED)
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
