"""Hugging Face hub ids (``owner/name``) via huggingface_hub: the repo's config.json, or — for repos
without one — its safetensors metadata read from file headers only (``get_safetensors_metadata``).

``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is honoured: only the local hub cache is consulted,
and an id that is not cached raises :class:`OfflineError` naming the fix.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ..errors import OfflineError, SourceError
from .safetensors_header import validate_entries

_TRUE = {"1", "on", "yes", "true"}


def offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_hub_id(source: str) -> bool:
    s = source.removeprefix("hf-hub:")
    parts = s.split("/")
    return (len(parts) == 2 and all(parts) and not s.startswith(("/", ".", "~"))
            and not any(c.isspace() for c in s))


def _unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why ``endpoint`` cannot be reached with a direct TCP connection (``None`` if it can, or if a
    proxy is configured, in which case huggingface_hub is left to find out). Avoids minutes of
    retries when the machine is simply offline."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")):
        return None
    u = urlparse(endpoint)
    if not u.hostname:
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{u.hostname}:{port}: {e.strerror or type(e).__name__}"
    return None


def fetch(repo_id: str) -> tuple[str, object]:
    """``("config", path_to_config_json)`` or ``("safetensors", {file: [TensorEntry...]})``."""
    repo_id = repo_id.removeprefix("hf-hub:")
    import huggingface_hub as hf
    from huggingface_hub import errors as he

    if offline():
        cached = hf.try_to_load_from_cache(repo_id, "config.json")
        if isinstance(cached, str):
            return "config", cached
        raise OfflineError(
            f"{repo_id} is not cached and HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to fetch its "
            f"config.json, run `hf download {repo_id} config.json` while online, or point at a local "
            "model directory")
    cached = hf.try_to_load_from_cache(repo_id, "config.json")
    why = _unreachable(hf.constants.ENDPOINT)
    if why is not None:
        if isinstance(cached, str):
            return "config", cached
        raise SourceError(f"could not reach the Hugging Face hub for {repo_id} ({why}): check your "
                          "network or HF_ENDPOINT, set HF_HUB_OFFLINE=1 to use cached files, or point "
                          "at a local model directory")
    try:
        return "config", hf.hf_hub_download(repo_id, "config.json")
    except he.GatedRepoError:
        raise SourceError(f"{repo_id} is gated on the Hugging Face hub: accept its licence on the "
                          "hub and log in (`hf auth login`), or use a local copy") from None
    except he.RepositoryNotFoundError:
        raise SourceError(f"{repo_id} was not found on the Hugging Face hub (or is private): check "
                          "the id, log in for private repos, or use a local path") from None
    except he.RevisionNotFoundError:
        raise SourceError(f"{repo_id}: revision not found on the hub; check the id") from None
    except (he.LocalEntryNotFoundError, he.OfflineModeIsEnabled) as e:
        raise SourceError(f"could not reach the Hugging Face hub for {repo_id} ({type(e).__name__}): "
                          "check your network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use a cached "
                          "copy, or point at a local model directory") from None
    except (he.RemoteEntryNotFoundError, he.EntryNotFoundError):
        pass  # no config.json: fall back to safetensors headers
    except he.HfHubHTTPError as e:
        raise SourceError(f"the Hugging Face hub refused {repo_id} ({str(e).splitlines()[0]}); "
                          "retry later or use a local copy") from None
    except OSError as e:
        raise SourceError(f"could not reach the Hugging Face hub for {repo_id} ({type(e).__name__}): "
                          "check your network or HF_ENDPOINT, or use a local path") from None
    try:
        meta = hf.get_safetensors_metadata(repo_id)
    except he.NotASafetensorsRepoError:
        raise SourceError(f"{repo_id} has neither config.json nor safetensors weights on the hub; "
                          "download its weights and point at the file") from None
    except Exception as e:  # noqa: BLE001 - network/parsing failures, one line for the user
        raise SourceError(f"could not read safetensors metadata of {repo_id} "
                          f"({type(e).__name__}); check your network or use a local copy") from None
    files = {}
    for fname, fm in meta.files_metadata.items():
        doc = {name: {"dtype": ti.dtype, "shape": list(ti.shape), "data_offsets": list(ti.data_offsets)}
               for name, ti in fm.tensors.items()}
        files[fname], _ = validate_entries(doc, data_size=None, where=f"{repo_id}/{fname}")
    return "safetensors", files
