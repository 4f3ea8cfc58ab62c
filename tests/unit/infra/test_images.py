"""The container images (infra/docker/) and the install sets they come from (pyproject.toml).

Docker cannot build here, so the files are checked statically: the serving image's install
set is resolved from pyproject and the installed packages' metadata (the venv is built from
the same constraints.txt) and must hold no TensorFlow; every package in it is pinned."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import DOCKER, REPO, constraints, makefile_images

HEAVY = {"tensorflow", "tensorflow-cpu", "tf-keras", "keras", "nncf"}  # training only
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def direct_requirements(extras: list[str]) -> list[Requirement]:
    """The core dependencies plus those of ``extras``, following ``patchray[...]`` inside."""
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        for text in PROJECT["optional-dependencies"][extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "patchray":
                reqs += direct_requirements(sorted(req.extras))
            else:
                reqs.append(req)
    return reqs


def install_set(extras: list[str]) -> set[str]:
    """Every distribution pip installs for ``patchray[extras]`` on this platform: the
    requirements' closure, markers evaluated with the extras each package is asked for."""
    wanted: dict[str, set[str]] = {}
    todo = direct_requirements(extras)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in wanted and set(req.extras) <= wanted[name]:
            continue
        wanted[name] = wanted.get(name, set()) | set(req.extras)
        for text in md.distribution(name).requires or []:
            dep = Requirement(text)
            envs = [{"extra": e} for e in wanted[name] or {""}]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append(dep)
    return set(wanted)


def test_serve_extra_names_no_tensorflow_and_every_package_is_pinned():
    pins = constraints()
    for req in direct_requirements(["serve"]):
        name = canonicalize_name(req.name)
        assert name not in HEAVY, f"{req} in the serving install set"
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, " \
                                                   f"outside {req}"


def test_serving_image_install_set_excludes_tensorflow_transitively():
    serving = install_set(["serve"])
    assert {"ray", "openvino", "fastapi"} <= serving
    assert not serving & HEAVY, sorted(serving & HEAVY)
    unpinned = sorted(serving - set(constraints()))
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}"


def test_test_extra_still_installs_the_training_stack_and_every_pin_is_used():
    """`make setup` installs '.[test]': it must keep everything it installed before the split."""
    everything = install_set(["test"])
    assert {"tensorflow", "tf-keras", "nncf", "openvino", "h5py", "matplotlib", "pytest",
            "moto", "kubernetes-validate"} <= everything
    # setuptools and wheel (asked for by TensorFlow's dependencies) are pip's own tools,
    # left to the venv, as before the split.
    unpinned = sorted(everything - set(constraints()) - {"setuptools", "wheel"})
    assert not unpinned, f"not pinned in constraints.txt: {unpinned}"


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text()


def pip_installs(text: str) -> list[str]:
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return re.findall(r"pip install[^&\n]*", code.replace("\\\n", " "))


@pytest.mark.parametrize("name", ["serve.Dockerfile", "train.Dockerfile"])
def test_images_install_with_the_constraints_on_python_311(name):
    text = dockerfile(name)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M), "base: python:3.11-slim"
    assert "COPY constraints.txt" in text
    installs = pip_installs(text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    # The Serve config's import_path (serve.app:build) must be importable on every node.
    (app,) = __import__("yaml").safe_load((REPO / "serve/config.yaml").read_text())["applications"]
    module = app["import_path"].split(":")[0].split(".")[0]
    assert f"COPY {module}/ {module}/" in text and "PYTHONPATH=/app" in text


def test_serving_image_installs_only_the_serve_extra():
    (install,) = pip_installs(dockerfile("serve.Dockerfile"))
    assert re.findall(r"\.\[([^\]]*)\]", install) == ["serve"], install
    assert "find_spec" in dockerfile("serve.Dockerfile")  # the build itself refuses TensorFlow


def test_training_image_extras_come_from_a_build_arg_defaulting_to_train():
    text = dockerfile("train.Dockerfile")
    assert re.search(r"^ARG EXTRAS=train$", text, re.M)
    assert '".[${EXTRAS}]"' in pip_installs(text)[0]
    assert {"train", "gpu"} <= set(PROJECT["optional-dependencies"])


@pytest.mark.parametrize("name", ["serve.Dockerfile", "train.Dockerfile"])
def test_images_set_the_paths_serve_config_uses(name):
    from .conftest import serve_args

    env = dict(re.findall(r"(PATCHRAY_\w+)=(\S+)", dockerfile(name)))
    args = serve_args()
    assert env == {"PATCHRAY_REGISTRY": args["registry"], "PATCHRAY_KEYS": args["keys"],
                   "PATCHRAY_AUDIT": args["audit_dir"]}


@pytest.mark.parametrize("name", ["serve.Dockerfile", "train.Dockerfile"])
def test_dockerignore_lets_every_copied_path_in(name):
    ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {src.rstrip("/") for line in re.findall(r"^COPY (.+)$", dockerfile(name), re.M)
              for src in line.split()[:-1]}
    assert copied <= allowed, copied - allowed


def test_makefile_builds_each_image_from_its_dockerfile_with_the_project_version():
    images = makefile_images()
    assert set(images) == {"SERVE_IMAGE", "TRAIN_IMAGE", "TRAIN_GPU_IMAGE"}
    for image in images.values():
        assert image.endswith(":" + PROJECT["version"]), image
    text = (REPO / "Makefile").read_text()
    builds = dict((var, (dockerfile_name, extras)) for dockerfile_name, extras, var in re.findall(
        r"docker build -f infra/docker/(\S+)(?: --build-arg EXTRAS=(\S+))? -t \$\((\w+)\)", text))
    assert builds == {"SERVE_IMAGE": ("serve.Dockerfile", ""),
                      "TRAIN_IMAGE": ("train.Dockerfile", "train"),
                      "TRAIN_GPU_IMAGE": ("train.Dockerfile", "train,gpu")}


def test_operator_commands_run_in_the_serving_image_without_the_training_stack(tmp_path):
    """Operators run `patchray keys|registry|audit` inside the serving pods (infra/README.md):
    those must work with the training-only packages absent (their imports blocked here)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {sorted(HEAVY | {"tf_keras", "h5py", "matplotlib"})!r}:
                    raise ImportError("not in the serving image: " + name)
        sys.meta_path.insert(0, Block())
        from patchray.cli import main
        keys = {str(tmp_path / "keys.json")!r}
        assert main(["keys", "--store", keys, "create", "lab-a"]) == 0
        assert main(["keys", "--store", keys, "list"]) == 0
        assert main(["registry", "--registry", {str(tmp_path / "registry")!r}, "list"]) == 0
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
