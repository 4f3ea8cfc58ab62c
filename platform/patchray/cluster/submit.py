"""Submit patchray jobs to a running Ray cluster through the Ray Jobs API, and follow them.

    patchray submit --address http://<head>:8265 train --config jobs/train-demo.yaml \\
        --set data.root=s3://bucket/data --set train.storage=s3://bucket/runs
    patchray jobs list | status ID | logs ID [--follow] | stop ID      (--address or RAY_ADDRESS)

What runs on the cluster is the command line after ``submit``, exactly as it would run here
(``python -m patchray.cli train --config ...``): every job kind, its options and its spec
work the same way, and a spec is checked here, before anything is sent. The job's driver
joins the cluster it runs on (:func:`patchray.runtime.cluster_address`) and never starts a
Ray of its own.

The runtime environment of a job (:func:`build_runtime_env`):

* ``working_dir``: the project (the checkout this patchray runs from, without ``.venv``,
  ``.git``, run folders and what ``.gitignore`` lists) or ``--working-dir``; the entrypoint
  runs inside it, so ``--config jobs/x.yaml`` is sent as a path relative to it;
* ``py_modules``: this patchray package, so the cluster runs the code that was checked here
  (``--installed``: the patchray installed on the cluster's nodes instead); the nodes'
  ``python`` must provide patchray's dependencies (the cluster image);
* ``env_vars``: :data:`patchray.runtime.PROCESS_ENV` (``TF_USE_LEGACY_KERAS=1`` before
  TensorFlow, ...) and the non-secret ``--env NAME=VALUE`` given. **No credentials**: a
  runtime_env is stored in plain text in the cluster's GCS and shown by the dashboard and
  ``ray job list``, so names that look like secrets are refused. The cluster's nodes bring
  their own S3 credentials (instance profile, IRSA, or the environment Ray was started with).

Ray's token authentication (Ray >= 2.52, ``RAY_AUTH_MODE=token`` on every node): the token
is read like Ray reads it (``RAY_AUTH_TOKEN``, else the file at ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``) and sent as ``Authorization: Bearer``.

Everything but :func:`connect` and the functions taking a client is plain and tested without
Ray (tests/unit/cluster/test_submit.py); tests/integration/test_cluster.py runs it on a real
two-node cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shlex
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchray import __version__
from patchray.errors import ClusterError, ConfigError

#: The interpreter command a job runs; ``python`` is the one on the cluster node's PATH.
ENTRYPOINT_PREFIX = ("python", "-m", "patchray.cli")
#: Never uploaded (besides what .gitignore lists). Patterns without a slash match at any
#: depth and also apply to the shipped package, so none may name one of its subpackages.
UPLOAD_EXCLUDES = (".git", ".venv", "venv", "__pycache__", "*.pyc", "*.egg-info",
                   ".ruff_cache", ".pytest_cache", "/runs/")
#: Parts of variable names that hold secrets: refused in a job's env_vars.
SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE_KEY",
                  "ACCESS_KEY", "API_KEY", "AUTH")
#: Commands that must not run as a job (they talk to a cluster from outside it).
NOT_JOBS = ("submit", "jobs")
#: Config keys holding paths: a relative local one lands in the job's temporary working
#: directory on the cluster node, and is gone when the job ends.
PATH_KEYS = ("runs_root", "data.root", "registry.root", "train.storage")
ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # Ray's order
TOKEN_HELP = ("set RAY_AUTH_TOKEN_PATH to a file holding the cluster's token (or "
              "RAY_AUTH_TOKEN, or RAY_AUTH_MODE=token with the token in ~/.ray/auth_token)")

# --------------------------------------------------------------------------- plain parts


@dataclass(frozen=True)
class JobRequest:
    """Everything ``JobSubmissionClient.submit_job`` is given."""

    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    submission_id: str | None = None


def project_root() -> Path | None:
    """The checkout this patchray runs from (``pyproject.toml`` and ``jobs/`` beside
    ``platform/``), or None for an installed package."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() and (root / "jobs").is_dir() else None


def package_dir() -> Path:
    """The folder of the ``patchray`` package itself (what ``py_modules`` ships)."""
    return Path(__file__).resolve().parents[1]


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret."""
    upper = name.upper()
    return any(marker in upper for marker in SECRET_MARKERS)


def job_env_vars(extra: Sequence[str] = ()) -> dict[str, str]:
    """The job's ``env_vars``: :data:`patchray.runtime.PROCESS_ENV` plus ``NAME=VALUE``
    pairs, refusing names that look like secrets."""
    from patchray.runtime import PROCESS_ENV

    env = dict(PROCESS_ENV)
    for item in extra:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--env {item!r} must look like NAME=VALUE (e.g. "
                              "PATCHRAY_S3_ENDPOINT=http://minio:9000)")
        if is_secret_name(name):
            raise ConfigError(
                f"--env {name}: looks like a secret, and a job's env_vars are stored in plain "
                "text in the cluster's GCS (shown by the dashboard and `ray job list`). Give "
                "the cluster's nodes their own credentials instead (instance profile, IRSA, "
                "or set them in the environment of `ray start` on every node)")
        env[name] = value
    return env


def _config_option(args: Sequence[str], i: int) -> tuple[str, int] | None:
    """``(path, width)`` when ``args[i]`` is ``--config PATH`` (width 2) or ``--config=PATH``."""
    if args[i] == "--config" and i + 1 < len(args):
        return args[i + 1], 2
    if args[i].startswith("--config="):
        return args[i].partition("=")[2], 1
    return None


def relocate_config(args: Sequence[str], *, working_dir: Path, cwd: Path) -> list[str]:
    """``args`` with ``--config PATH`` made relative to ``working_dir`` (where the job runs on
    the cluster); a spec outside it cannot reach the cluster and is an error."""
    out: list[str] = []
    i = 0
    root = working_dir.resolve()
    while i < len(args):
        found = _config_option(args, i)
        if found is None:
            out.append(args[i])
            i += 1
            continue
        path, width = found
        spec = (cwd / path).resolve()
        try:
            relative = spec.relative_to(root)
        except ValueError:
            raise ConfigError(
                f"--config {path}: {spec} is outside the job's working directory {root}, so "
                "the cluster would not have it; move it inside, or pass --working-dir "
                "(before the command) to a folder that holds it") from None
        out += ["--config", relative.as_posix()]
        i += width
    return out


def build_entrypoint(args: Sequence[str]) -> str:
    """The shell command the cluster runs: ``python -m patchray.cli <args>``, quoted."""
    return shlex.join([*ENTRYPOINT_PREFIX, *args])


def build_runtime_env(*, working_dir: Path, env_vars: Mapping[str, str],
                      package: Path | None) -> dict[str, Any]:
    """The job's runtime_env: the working dir, this package (``package``; None: the one
    installed on the cluster), the env vars, and what never to upload."""
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": list(UPLOAD_EXCLUDES),
        "env_vars": dict(env_vars),
    }
    if package is not None:
        runtime_env["py_modules"] = [str(package)]
    return runtime_env


def job_metadata(args: Sequence[str]) -> dict[str, str]:
    """What ``patchray jobs list`` shows of a job (metadata values must be strings)."""
    return {"patchray_command": shlex.join(args), "patchray_version": __version__}


def prepare_job(command: Sequence[str], *, working_dir: Path, cwd: Path,
                env: Sequence[str] = (), ship_package: bool = True,
                submission_id: str | None = None) -> JobRequest:
    """The request for one patchray command line (``["train", "--config", ...]``)."""
    if not command:
        raise ConfigError("submit needs a patchray command to run, e.g. `patchray submit "
                          "train --config jobs/train-demo.yaml`")
    if command[0] in NOT_JOBS:
        raise ConfigError(f"`patchray {command[0]}` talks to a cluster from outside; it cannot "
                          "run as a job")
    if not working_dir.is_dir():
        raise ConfigError(f"--working-dir {working_dir}: not a folder")
    args = relocate_config(command, working_dir=working_dir, cwd=cwd)
    return JobRequest(
        entrypoint=build_entrypoint(args),
        runtime_env=build_runtime_env(working_dir=working_dir.resolve(),
                                      env_vars=job_env_vars(env),
                                      package=package_dir() if ship_package else None),
        metadata=job_metadata(args),
        submission_id=submission_id,
    )


def cluster_path_warnings(config: Mapping[str, Any]) -> list[str]:
    """Why some paths of a resolved spec (``model_dump``) will not outlive the job: relative
    local paths resolve inside the job's temporary working directory on the cluster."""
    from patchray import storage

    warnings = []
    for dotted in PATH_KEYS:
        value: Any = config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str) and value and not storage.is_remote(value) \
                and not Path(value).expanduser().is_absolute():
            warnings.append(
                f"{dotted}={value!r} is a relative path: on the cluster it lands in the job's "
                "temporary working directory and is deleted with it; use s3://... or an "
                "absolute path on storage the nodes share")
    train = config.get("train")
    if isinstance(train, Mapping) and not train.get("storage") \
            and int(train.get("num_workers") or 1) > 1:
        warnings.append("train.storage is empty: Ray Train keeps the run on the driver's "
                        "disk, which workers on other nodes cannot reach; set it to s3://... "
                        "or a shared mount on a multi-node cluster")
    return warnings


def api_address(explicit: str | None, environ: Mapping[str, str]) -> str:
    """The cluster to talk to: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else
    ``RAY_ADDRESS``."""
    if explicit:
        return explicit
    for name in ADDRESS_ENV:
        if environ.get(name):
            return environ[name]
    raise ClusterError("no Ray cluster given: pass --address http://<head>:8265 (the head "
                       "node's dashboard) or set RAY_ADDRESS")


def auth_token(environ: Mapping[str, str], home: Path) -> str | None:
    """Ray's token as Ray itself finds it, or None when this client is not asked to use one."""
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if not path and environ.get("RAY_AUTH_MODE", "").lower() == "token":
        path = str(home / ".ray" / "auth_token")
    if not path:
        return None
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise ClusterError(f"cannot read Ray's auth token from {path}: {e.strerror}; "
                           f"{TOKEN_HELP}") from e
    if not token:
        raise ClusterError(f"Ray's auth token file {path} is empty; {TOKEN_HELP}")
    return token


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def as_dict(details: Any) -> dict[str, Any]:
    """A ``JobDetails`` / ``JobInfo`` (pydantic model or dataclass) as a plain dict."""
    if isinstance(details, Mapping):
        return dict(details)
    for method in ("model_dump", "dict"):
        if callable(getattr(details, method, None)):
            return dict(getattr(details, method)())
    import dataclasses

    return dataclasses.asdict(details)


def _status(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def _time(ms: Any) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _duration(start_ms: Any, end_ms: Any, now_s: float) -> str:
    if not start_ms:
        return "-"
    seconds = ((end_ms / 1000) if end_ms else now_s) - start_ms / 1000
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def job_row(details: Any) -> dict[str, Any]:
    """The fields patchray shows of a job."""
    d = as_dict(details)
    metadata = d.get("metadata") or {}
    return {
        "id": d.get("submission_id") or d.get("job_id") or "-",
        "status": _status(d.get("status")),
        "command": metadata.get("patchray_command") or d.get("entrypoint") or "",
        "entrypoint": d.get("entrypoint") or "",
        "message": d.get("message") or "",
        "start_time": d.get("start_time"),
        "end_time": d.get("end_time"),
        "driver_node_id": d.get("driver_node_id"),
        "driver_exit_code": d.get("driver_exit_code"),
        "type": _status(d.get("type")),
    }


def format_jobs(rows: Sequence[Mapping[str, Any]], *, now_s: float | None = None) -> str:
    """``patchray jobs list``: submitted jobs, oldest first."""
    now_s = time.time() if now_s is None else now_s
    jobs = sorted((r for r in rows if r.get("type", "SUBMISSION") in ("SUBMISSION", "")),
                  key=lambda r: r.get("start_time") or 0)
    if not jobs:
        return "no jobs submitted to this cluster"
    lines = [f"{'id':<28} {'status':<10} {'started':<19} {'took':>7}  command"]
    for r in jobs:
        lines.append(f"{r['id']:<28} {r['status']:<10} {_time(r.get('start_time')):<19} "
                     f"{_duration(r.get('start_time'), r.get('end_time'), now_s):>7}  "
                     f"{r['command']}")
    return "\n".join(lines)


def format_status(row: Mapping[str, Any], *, now_s: float | None = None) -> str:
    """``patchray jobs status ID``."""
    now_s = time.time() if now_s is None else now_s
    lines = [f"{row['id']}: {row['status']}" + (f" ({row['message']})" if row["message"] else ""),
             f"  command:  {row['command']}",
             f"  started:  {_time(row.get('start_time'))}, took "
             f"{_duration(row.get('start_time'), row.get('end_time'), now_s)}"]
    if row.get("driver_node_id"):
        lines.append(f"  driver on node {row['driver_node_id']}")
    if row.get("driver_exit_code") is not None:
        lines.append(f"  exit status {row['driver_exit_code']}")
    return "\n".join(lines)


def exit_status(status: str, driver_exit_code: int | None) -> int:
    """``patchray submit``'s exit status for a job that ended: 0 when it succeeded, the
    job's own exit status when it failed (1 if unknown), 130 when it was stopped."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 130
    if status == "FAILED":
        return driver_exit_code if driver_exit_code else 1
    return 0  # still pending or running: nothing failed yet


# --------------------------------------------------------------------------- the Ray glue


@contextlib.contextmanager
def _cluster_errors(address: str, action: str) -> Iterator[None]:
    """Ray's errors as :class:`ClusterError`, saying what to check."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as e:
        first = (str(e).strip().splitlines() or ["refused"])[0]
        raise ClusterError(f"the Ray cluster at {address} refused to {action}: {first}; it "
                           f"requires Ray's token: {TOKEN_HELP}") from e
    except (ConnectionError, requests.RequestException) as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address} to {action}: check "
                           "--address (the head node's dashboard, http://<head>:8265) and "
                           "that the cluster is running") from e
    except RuntimeError as e:
        raise ClusterError(f"cannot {action} on the Ray cluster at {address}: {e}") from e


@contextlib.contextmanager
def _without_address_env() -> Iterator[None]:
    # Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address a client is given;
    # api_address has already chosen (an explicit --address first), so hide them meanwhile.
    saved = {name: os.environ.pop(name) for name in ADDRESS_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None, *, environ: Mapping[str, str] | None = None,
            home: Path | None = None) -> Any:
    """A ``JobSubmissionClient`` for the cluster (``--address`` or the environment), with
    Ray's token when one is configured."""
    from ray.job_submission import JobSubmissionClient

    environ = os.environ if environ is None else environ
    url = api_address(address, environ)
    headers = auth_headers(auth_token(environ, Path.home() if home is None else home))
    with _cluster_errors(url, "connect"), _without_address_env():
        return JobSubmissionClient(url, headers=headers or None)


def submit(client: Any, request: JobRequest) -> str:
    """Submit the job; its submission id."""
    with _cluster_errors(client.get_address(), "submit the job"):
        return client.submit_job(entrypoint=request.entrypoint,
                                 runtime_env=request.runtime_env,
                                 metadata=request.metadata,
                                 submission_id=request.submission_id)


def list_jobs(client: Any) -> list[dict[str, Any]]:
    with _cluster_errors(client.get_address(), "list jobs"):
        return [job_row(d) for d in client.list_jobs()]


def job_status(client: Any, job_id: str) -> dict[str, Any]:
    with _cluster_errors(client.get_address(), f"read job {job_id}"):
        return job_row(client.get_job_info(job_id))


def job_logs(client: Any, job_id: str) -> str:
    with _cluster_errors(client.get_address(), f"read the logs of job {job_id}"):
        return client.get_job_logs(job_id)


def stop_job(client: Any, job_id: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    with _cluster_errors(client.get_address(), f"stop job {job_id}"):
        return bool(client.stop_job(job_id))


def follow_logs(client: Any, job_id: str, write: Callable[[str], None]) -> None:
    """Write the job's log as it grows, until the job ends."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    with _cluster_errors(client.get_address(), f"follow the logs of job {job_id}"):
        asyncio.run(tail())


def wait_for_job(client: Any, job_id: str, *, poll_s: float = 1.0,
                 timeout_s: float | None = None) -> dict[str, Any]:
    """Poll until the job ends (or ``timeout_s``); its last :func:`job_row`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        row = job_status(client, job_id)
        if row["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return row
        if deadline is not None and time.monotonic() > deadline:
            return row
        time.sleep(poll_s)
