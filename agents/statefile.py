"""Small per-resource state file in HA_RSCTMP (/run/resource-agents, cleared at boot):
the domain name read from the config file (keyed by its path, mtime and size, so monitor
need not parse XML) and the utilization values last given to the CIB (so monitor calls
crm_resource only when they change).  Best effort: an unwritable directory just means
no cache."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Mapping


def path_for(environ: Mapping[str, str], instance: str, config: str) -> str:
    base = environ.get("HA_RSCTMP") or "/run/resource-agents"
    key = instance.split(":", 1)[0] if instance else "cfg" + config
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"{base}/kvmha-Guest-{safe}.state"


def load(path: str) -> Dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(8192)
    except (OSError, UnicodeDecodeError):
        return {}
    out: Dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def save(path: str, data: Mapping[str, str]) -> bool:
    text = "".join(f"{k}={v}\n" for k, v in sorted(data.items()) if "\n" not in v)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        return True
    except OSError:
        remove(tmp)
        return False


def remove(path: str) -> None:
    import contextlib  # lazy: not on the monitor path

    with contextlib.suppress(OSError):
        os.unlink(path)
