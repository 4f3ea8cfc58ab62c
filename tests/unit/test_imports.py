"""Import-time guarantees, checked in fresh interpreters (this process may have TF loaded)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
        timeout=120, env=env,
    )


def test_importing_the_library_has_no_side_effects(tmp_path):
    proc = _run(
        """
        import logging, os, sys
        before = set(os.listdir("."))
        import importlib, pkgutil
        import patchray
        modules = [m.name for m in pkgutil.walk_packages(patchray.__path__, "patchray.")]
        assert "patchray.workflows.demo" in modules and len(modules) > 40, modules
        for name in modules:
            importlib.import_module(name)
        assert set(os.listdir(".")) == before, "import created files"
        assert not logging.getLogger().handlers, "import configured logging"
        assert "tensorflow" not in sys.modules, "import pulled in TensorFlow"
        assert "TF_USE_LEGACY_KERAS" not in os.environ, "import changed the environment"
        import ray
        assert not ray.is_initialized(), "import started Ray"
        print("clean")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clean" in proc.stdout


def test_serving_path_never_imports_tensorflow(tmp_path):
    proc = _run(
        """
        import sys
        import patchray.serving.app, patchray.serving.launch, patchray.serving.ingress
        import patchray.inference.predictor, patchray.inference.preprocess
        import patchray.evaluation.scoring, patchray.registry.card, patchray.registry.store
        sys.path.insert(0, %r)
        import serve.app
        heavy = ("tensorflow", "tf_keras", "keras", "nncf")  # nncf: export only
        bad = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
        assert not bad, bad
        print("no tensorflow")
        """ % str(REPO),
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no tensorflow" in proc.stdout


def test_lower_layers_never_import_the_workflows():
    """Workflows compose stages; stages, benchmarks and the serving path must not depend on
    them (or every change to a job would ripple down)."""
    import ast

    package = REPO / "platform" / "patchray"
    offenders = []
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if rel.parts[0] == "workflows" or rel.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{rel}: {n}" for n in names if n.startswith("patchray.workflows")]
    assert not offenders, offenders


def test_no_private_ray_modules_are_imported():
    import ast

    found = []
    for path in (REPO / "platform" / "patchray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found += [f"{path.name}: {n}" for n in names
                      if n.startswith("ray") and ("._" in n or "_internal" in n)]
    assert not found, found
