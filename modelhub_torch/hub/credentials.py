"""Where a client finds its token for a hub: ``MODELHUB_TOKEN``, else the one
``modelhub login URL`` saved for that hub in the user's config file (mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

from modelhub_torch.errors import ModelHubError


def hub_origin(url: str) -> str:
    """``scheme://host:port[/path]`` of a hub URL (a hub may be mounted under a path):
    the key its token is saved under."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelHubError(f"{url!r} is not a hub URL (http://HOST[:PORT] or https://...)")
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname.lower()}{port}{parts.path.rstrip('/')}"


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "modelhub" / "tokens.json"


def _saved() -> dict[str, str]:
    try:
        doc = json.loads(config_file().read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def token_for(url: str) -> str | None:
    """The token to send to the hub at ``url`` (None: go anonymous)."""
    env = os.environ.get("MODELHUB_TOKEN", "").strip()
    if env:
        return env
    return _saved().get(hub_origin(url))


def save_token(url: str, token: str) -> Path:
    """Remember ``token`` for the hub at ``url``; the file is readable by its owner only."""
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = {**_saved(), hub_origin(url): token}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(tokens, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def forget_token(url: str) -> bool:
    tokens = _saved()
    if tokens.pop(hub_origin(url), None) is None:
        return False
    path = config_file()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as fh:
        json.dump(tokens, fh, indent=2)
    return True
