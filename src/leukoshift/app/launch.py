"""Settings of the app and the ``streamlit run`` command line that starts it.

``leukoshift app`` passes its options to the Streamlit script after ``--``; the script reads
them back with :func:`settings_from`. Streamlit's test harness (``AppTest``) runs the
script without a command line, so the same options may come from the environment
variable :data:`ARGS_ENV` instead.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from leukoshift.errors import UserError

#: Environment variable holding the app's options as one shell-quoted string.
ARGS_ENV = "LEUKOSHIFT_APP_ARGS"
SCRIPT = Path(__file__).with_name("main.py")
#: Streamlit refuses uploads above this many MB before they reach the app.
MAX_UPLOAD_MB = 64


@dataclass(frozen=True)
class AppSettings:
    checkpoint: Path
    manifests: tuple[Path, ...] = ()
    results: Path | None = None
    k: int = 8
    max_points: int = 3000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"app options: {message}")


def parse_app_args(argv: Sequence[str]) -> AppSettings:
    parser = _Parser(prog="leukoshift app", add_help=False)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, action="append", default=[])
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-points", type=int, default=3000)
    ns = parser.parse_args(list(argv))
    if ns.k < 1 or ns.max_points < 4:
        raise UserError("app options: --k must be >= 1 and --max-points >= 4")
    return AppSettings(ns.checkpoint, tuple(ns.manifest), ns.results, ns.k, ns.max_points)


def settings_from(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> AppSettings:
    """Options from :data:`ARGS_ENV` when it is set, else from the script's arguments."""
    text = environ.get(ARGS_ENV)
    return parse_app_args(shlex.split(text) if text else argv)


def to_args(settings: AppSettings) -> list[str]:
    """The options as script arguments, paths made absolute (the server's folder may differ)."""
    args = ["--checkpoint", str(settings.checkpoint.resolve())]
    for m in settings.manifests:
        args += ["--manifest", str(m.resolve())]
    if settings.results is not None:
        args += ["--results", str(settings.results.resolve())]
    return [*args, "--k", str(settings.k), "--max-points", str(settings.max_points)]


def check_settings(settings: AppSettings) -> None:
    """Fail before Streamlit starts when a file the app needs is missing."""
    if not settings.checkpoint.is_file():
        raise UserError(f"--checkpoint {settings.checkpoint}: file not found")
    for m in settings.manifests:
        if not m.is_file():
            raise UserError(f"--manifest {m}: file not found")
    if settings.results is not None and not settings.results.is_dir():
        raise UserError(f"--results {settings.results}: folder not found")


def streamlit_command(settings: AppSettings, port: int = 8501, address: str | None = None) -> list[str]:
    """``python -m streamlit run main.py ... -- <app options>``: headless, no usage statistics."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(SCRIPT),
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",  # no "Deploy" button: this app runs next to the data, not on a cloud
    ]
    if address is not None:
        cmd += ["--server.address", address]
    return [*cmd, "--", *to_args(settings)]
