"""Terminal output: patchray's lines on the terminal, everything else in the run's log file."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import logging, os, pathlib, sys, time
from patchray.logs import RunOutput
log = logging.getLogger("patchray.workflows.demo")
with RunOutput(pathlib.Path(sys.argv[1])):
    log.info("stage 1/4: something the person wants to see")
    print("Started a local Ray instance.")                  # Ray's start-up chatter
    os.write(2, b"I0000 tensorflow/core/platform: cpu feature guard\\n")  # C++ logging
    logging.getLogger("ray.data").warning("progress bar noise")
    # A Ray Train worker's progress line, as Ray forwards it to the driver's stdout:
    print("\\x1b[36m(RayTrainWorker pid=4242)\\x1b[0m [patchray] epoch 1/3  loss 0.6931",
          flush=True)
    time.sleep(0.6)
    log.warning("threshold landed below 0.5")
print("after: back on the terminal")
"""


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    log_file = tmp_path / "logs" / "patchray.log"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(log_file), *extra],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc, log_file


def test_terminal_shows_only_patchray_lines_and_the_file_holds_everything(tmp_path):
    proc, log_file = _run(tmp_path)
    terminal = (proc.stdout + proc.stderr).splitlines()
    assert terminal == [
        "[patchray] stage 1/4: something the person wants to see",
        "[patchray] epoch 1/3  loss 0.6931",
        "[patchray] warning: threshold landed below 0.5",
        "after: back on the terminal",
    ]
    text = log_file.read_text()
    for line in ("Started a local Ray instance.", "cpu feature guard", "progress bar noise",
                 "(RayTrainWorker pid=4242)\x1b[0m [patchray] epoch 1/3",
                 "INFO patchray.workflows.demo: stage 1/4"):
        assert line in text, line


def test_unexpected_errors_leave_their_traceback_in_the_log_and_name_it(tmp_path, capsys):
    from patchray import cli
    from patchray.logs import RunOutput

    def boom(args):
        with RunOutput(tmp_path / "logs" / "patchray.log"):
            raise ZeroDivisionError("a bug")

    parser_func = cli.build_parser
    try:
        cli.build_parser = lambda: _parser_running(parser_func(), boom)
        assert cli.main(["demo"]) == cli.EXIT_BUG
    finally:
        cli.build_parser = parser_func
    err = capsys.readouterr().err
    assert "patchray: unexpected error: ZeroDivisionError: a bug" in err
    assert "Traceback" not in err and str(tmp_path / "logs" / "patchray.log") in err
    assert "Traceback (most recent call last)" in (tmp_path / "logs/patchray.log").read_text()


def _parser_running(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:  # every subcommand runs ``func``
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser


def test_user_errors_are_one_line_with_no_traceback(tmp_path, capsys):
    from patchray import cli

    code = cli.main(["train", "--set", "train.model=cnn66", "--set", f"runs_root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert err.startswith("patchray: error: invalid config") and "unknown model 'cnn66'" in err
    assert "Traceback" not in err
