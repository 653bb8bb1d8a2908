"""Where the official ``kaggle`` client will find credentials, checked before any call (the
client itself prints a help text and exits 1 without them, even for ``kernels init``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dfdc.kaggle.common import KernelError

CREDENTIALS_HELP = (
    "no Kaggle credentials found. Create an API token on kaggle.com (Settings -> API) and either "
    "set KAGGLE_API_TOKEN, or save it as ~/.kaggle/access_token, or put kaggle.json "
    '({"username": ..., "key": ...}) into $KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle '
    "(chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY"
)


@dataclass
class Credentials:
    """Where the kaggle client will find its credentials (never the secret itself)."""

    source: str
    username: str | None


def find_credentials(env: dict[str, str] | None = None) -> Credentials:
    """Find credentials in the kaggle client's order; raise ``KernelError`` if there are none.

    Order: ``KAGGLE_API_TOKEN``; ``~/.kaggle/access_token(.txt)``; ``kaggle.json`` in
    ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else ``${XDG_CONFIG_HOME:-~/.config}/kaggle``,
    overlaid by ``KAGGLE_USERNAME``/``KAGGLE_KEY``; ``~/.kaggle/credentials.json``.
    """
    env = dict(os.environ if env is None else env)
    home = Path(env.get("HOME") or Path.home())
    env_user = env.get("KAGGLE_USERNAME") or None
    kaggle_json = _kaggle_json_path(env, home)
    json_user = json_key = None
    if kaggle_json is not None:
        try:
            data = json.loads(kaggle_json.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise KernelError(
                f"{kaggle_json}: not a valid kaggle.json ({exc}); download a new API token from kaggle.com"
            ) from None
        json_user, json_key = data.get("username") or None, data.get("key") or None
    username = env_user or json_user
    if env.get("KAGGLE_API_TOKEN"):
        return Credentials("KAGGLE_API_TOKEN", username)
    for name in ("access_token", "access_token.txt"):
        if (home / ".kaggle" / name).is_file():
            return Credentials(str(home / ".kaggle" / name), username)
    key = env.get("KAGGLE_KEY") or json_key
    if username and key:
        source = "KAGGLE_USERNAME/KAGGLE_KEY" if env.get("KAGGLE_KEY") else str(kaggle_json)
        return Credentials(source, username)
    if (home / ".kaggle" / "credentials.json").is_file():
        return Credentials(str(home / ".kaggle" / "credentials.json"), username)
    raise KernelError(CREDENTIALS_HELP)


def _kaggle_json_path(env: dict[str, str], home: Path) -> Path | None:
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    folders = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    folders += [home / ".kaggle", xdg / "kaggle"]
    for folder in folders:
        if (folder / "kaggle.json").is_file():
            return folder / "kaggle.json"
    return None


def resolve_username(explicit: str | None, env: dict[str, str] | None = None) -> str | None:
    """``--username``, else KAGGLE_USERNAME, else kaggle.json's; None when none is known."""
    if explicit:
        return explicit
    env = dict(os.environ if env is None else env)
    if env.get("KAGGLE_USERNAME"):
        return env["KAGGLE_USERNAME"]
    path = _kaggle_json_path(env, Path(env.get("HOME") or Path.home()))
    if path is not None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KernelError(f"{path}: not a valid kaggle.json ({exc})") from None
        if isinstance(data, dict) and data.get("username"):
            return str(data["username"])
    return None
