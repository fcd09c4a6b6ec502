"""Devices a training run may have to fit on: the bundled catalog, a user's own, ad-hoc budgets.

A :class:`Device` is a memory budget plus what is known about running PyTorch there. The catalog
lives in ``smmf_plan/data/devices.toml`` (one table per id; its header documents every key). Users
add or override entries with ``--devices-file FILE`` (same format) or with
``[tool.smmf-plan.devices.ID]`` tables in the nearest ``pyproject.toml`` above the current
directory. ``--device 512MiB`` / ``--device 4GB`` is an ad-hoc budget: usable = total, CPU
allocator, nothing known about PyTorch.

Assumptions: ``usable_bytes`` is what one process can allocate for tensors once the OS / runtime is
up; sizes in files are bytes (integers) or strings that :func:`smmf_plan.units.parse_size` reads.

A discrete GPU also has a host: the machine's RAM beside it, where a recipe that offloads the
optimizer keeps its state (``host_bytes``, per GPU, with ``host_basis`` saying where the figure
comes from; ``--host-memory`` replaces it). A GPU entry without one gets
:data:`DEFAULT_GPU_HOST_BYTES`, stated. CPU boards and unified-memory devices have no separate host:
their memory is the host's, and offloading to it is refused.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from .allocators import DEVICE_ALLOCATORS as ALLOCATORS
from .errors import PlanError
from .tomlfile import find_pyproject, loads, read_toml, tool_table
from .units import config_size, format_bytes, parse_size

MEMORY_KINDS = ("host RAM", "unified", "GPU", "MCU SRAM+PSRAM")
#: the memory a device's allocator hands out when its table names no memory_kind.
DEFAULT_MEMORY_KIND = {"cpu": "host RAM", "cuda": "GPU"}
#: memory kinds an allocator can serve ("unified": Apple silicon on the CPU rule, Jetson on CUDA).
KINDS_FOR_ALLOCATOR = {"cpu": ("host RAM", "unified", "MCU SRAM+PSRAM"), "cuda": ("GPU", "unified")}
PYTORCH_LEVELS = ("yes", "limited", "marginal", "no", "unknown")

_ID = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
#: keys a device table may hold; anything else is a typo and is reported as such.
_KEYS = {
    "name", "total_bytes", "usable_bytes", "memory_kind", "memory_detail", "bandwidth_gbps",
    "allocator", "usable_basis", "sourcing", "pytorch_training", "pytorch_reason", "pytorch_note",
    "sources", "host_bytes", "host_basis",
}
#: the host memory of a GPU whose entry states none: 16 GiB, the RAM of the smallest single-GPU
#: cloud instances (AWS g4dn.xlarge / g5.xlarge / g6.xlarge), so that a "fits" holds on them too.
DEFAULT_GPU_HOST_BYTES = 16 * 2**30
DEFAULT_GPU_HOST_BASIS = ("[assumed] 16 GiB: no host_bytes given; the RAM of the smallest single-GPU "
                          "cloud instances (AWS g4dn/g5/g6.xlarge); pass --host-memory for yours")


@dataclass(frozen=True)
class Device:
    """A memory budget: ``usable_bytes`` is what the fit is checked against."""

    id: str
    name: str
    total_bytes: int
    usable_bytes: int
    memory_kind: str = "host RAM"
    #: PyTorch allocator whose rounding applies: "cpu" (64-B aligned) or "cuda" (512-B blocks).
    allocator: str = "cpu"
    usable_basis: str = ""
    pytorch_training: str = "unknown"
    pytorch_reason: str = ""
    pytorch_note: str = ""
    memory_detail: str = ""
    bandwidth_gbps: float | None = None
    sourcing: str = ""
    sources: tuple[str, ...] = ()
    #: "catalog", "ad-hoc", or the file the entry came from.
    origin: str = "catalog"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: the host RAM beside a discrete GPU (per GPU), where offloaded state goes; None: the default.
    host_bytes: int | None = None
    host_basis: str = ""

    @property
    def has_host(self) -> bool:
        """Whether the device has a host memory of its own (a discrete GPU)."""
        return self.memory_kind == "GPU"

    @property
    def host_memory(self) -> int | None:
        """Host memory an offloading recipe may fill (None where the device is the host)."""
        if not self.has_host:
            return None
        return self.host_bytes if self.host_bytes is not None else DEFAULT_GPU_HOST_BYTES

    @property
    def host_memory_basis(self) -> str:
        if not self.has_host:
            return ""
        return self.host_basis if self.host_bytes is not None else DEFAULT_GPU_HOST_BASIS

    def with_host_memory(self, nbytes: int | None, basis: str = "as given with --host-memory") -> "Device":
        """This device with its host memory replaced (``nbytes`` None: unchanged)."""
        if nbytes is None:
            return self
        return replace(self, host_bytes=int(nbytes), host_basis=basis)

    def check_offload(self, offload: str | None) -> None:
        """:class:`PlanError` when ``offload`` cannot apply here (no host memory of its own)."""
        if offload is None or self.has_host:
            return
        what = {"unified": "unified memory (the host's and the GPU's are one)",
                "host RAM": "host RAM (a CPU device)"}.get(self.memory_kind, self.memory_kind)
        raise PlanError(f"--offload {offload} moves the optimizer from a GPU to its host, but {self.id} "
                        f"is {what}: drop --offload, or plan on a GPU device")

    @property
    def runs_pytorch(self) -> bool:
        """False only where PyTorch training is known not to run at all (MCUs, ARMv6, Edge TPU)."""
        return self.pytorch_training != "no"

    def describe(self) -> str:
        """``rpi-zero (383 MiB usable)`` — how verdicts name the device."""
        return f"{self.id} ({format_bytes(self.usable_bytes, 0)} usable)"

    def reference(self) -> dict:
        """The ``"device"`` object of JSON documents."""
        return {
            "id": self.id,
            "name": self.name,
            "memory_bytes": self.total_bytes,
            "usable_bytes": self.usable_bytes,
            "memory_kind": self.memory_kind,
            "allocator": self.allocator,
            "pytorch_training": self.pytorch_training,
            "host_memory_bytes": self.host_memory,
        }

    def to_dict(self) -> dict:
        """Everything known, for ``smmf-plan devices --json``."""
        return {
            **self.reference(),
            "memory_detail": self.memory_detail,
            "bandwidth_gbps": self.bandwidth_gbps,
            "usable_basis": self.usable_basis,
            "sourcing": self.sourcing,
            "pytorch_reason": self.pytorch_reason,
            "pytorch_note": self.pytorch_note,
            "sources": list(self.sources),
            "origin": self.origin,
            "host_basis": self.host_memory_basis,
        }


# --------------------------------------------------------------------------- parsing entries

def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PlanError(f"{where} = {value!r} must be a string")
    return value


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    text = _text(value, where)
    if text not in allowed:
        raise PlanError(f"{where} = {value!r} is not one of: " + ", ".join(repr(a) for a in allowed))
    return text


def device_from_table(device_id: str, table: Any, origin: str) -> Device:
    """One device from its TOML table; :class:`PlanError` names ``origin`` and the bad key."""
    key_id = str(device_id).strip().lower()
    where = f"{origin}: [{device_id}]"
    if not _ID.match(key_id):
        raise PlanError(f"{where}: device id {device_id!r} must be letters, digits and . _ + - "
                        "(e.g. my-board)")
    if not isinstance(table, Mapping):
        raise PlanError(f"{where} must be a table of keys (name, total_bytes, usable_bytes …), "
                        f"got {table!r}")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(_KEYS), n=1)
        raise PlanError(f"{where}: unknown key {unknown[0]!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + "; allowed: " + ", ".join(sorted(_KEYS)))
    if "total_bytes" not in table and "usable_bytes" not in table:
        raise PlanError(f"{where}: needs total_bytes (and optionally usable_bytes), "
                        "e.g. total_bytes = \"1GiB\"")
    total = config_size(table.get("total_bytes", table.get("usable_bytes")), f"{where}.total_bytes"
                  if "total_bytes" in table else f"{where}.usable_bytes")
    usable = config_size(table["usable_bytes"], f"{where}.usable_bytes") if "usable_bytes" in table else total
    if usable > total:
        raise PlanError(f"{where}: usable_bytes ({usable}) exceeds total_bytes ({total})")
    bandwidth = table.get("bandwidth_gbps")
    if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float))
                                  or bandwidth <= 0):
        raise PlanError(f"{where}.bandwidth_gbps = {bandwidth!r} must be a positive number")
    sources = table.get("sources", [])
    if isinstance(sources, str):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise PlanError(f"{where}.sources = {sources!r} must be a list of strings")
    allocator = _choice(table.get("allocator", "cpu"), f"{where}.allocator", ALLOCATORS)
    kind = _choice(table.get("memory_kind", DEFAULT_MEMORY_KIND[allocator]), f"{where}.memory_kind",
                   MEMORY_KINDS)
    if kind not in KINDS_FOR_ALLOCATOR[allocator]:
        raise PlanError(f"{where}: memory_kind = {kind!r} does not go with allocator = "
                        f"{allocator!r}; use memory_kind = "
                        + " or ".join(repr(k) for k in KINDS_FOR_ALLOCATOR[allocator])
                        + (" (the CUDA allocator hands out GPU memory)" if allocator == "cuda" else
                           " (GPU memory needs allocator = \"cuda\")"))
    host = config_size(table["host_bytes"], f"{where}.host_bytes") if "host_bytes" in table else None
    if host is not None and kind != "GPU":
        raise PlanError(f"{where}.host_bytes: only a GPU has a host memory of its own "
                        f"(memory_kind = {kind!r}): drop host_bytes")
    return Device(
        id=key_id,
        name=_text(table.get("name", key_id), f"{where}.name"),
        total_bytes=total,
        usable_bytes=usable,
        memory_kind=kind,
        allocator=allocator,
        usable_basis=_text(table.get("usable_basis", "" if origin == "catalog" else
                                     f"as given in {origin}"), f"{where}.usable_basis"),
        pytorch_training=_choice(table.get("pytorch_training", "unknown"), f"{where}.pytorch_training",
                                 PYTORCH_LEVELS),
        pytorch_reason=_text(table.get("pytorch_reason", ""), f"{where}.pytorch_reason"),
        pytorch_note=_text(table.get("pytorch_note", ""), f"{where}.pytorch_note"),
        memory_detail=_text(table.get("memory_detail", ""), f"{where}.memory_detail"),
        bandwidth_gbps=float(bandwidth) if bandwidth is not None else None,
        sourcing=_text(table.get("sourcing", ""), f"{where}.sourcing"),
        sources=tuple(sources),
        origin=origin,
        host_bytes=host,
        host_basis=_text(table.get("host_basis", "" if origin == "catalog" or host is None else
                                   f"as given in {origin}"), f"{where}.host_basis"),
    )


def devices_from_tables(tables: Any, origin: str) -> dict[str, Device]:
    if not isinstance(tables, Mapping):
        raise PlanError(f"{origin}: expected one table per device id, got {tables!r}")
    out: dict[str, Device] = {}
    for device_id, table in tables.items():
        dev = device_from_table(device_id, table, origin)
        if dev.id in out:
            raise PlanError(f"{origin}: device id {device_id!r} appears twice (ids ignore case)")
        out[dev.id] = dev
    return out


def load_devices_file(path: str | Path) -> dict[str, Device]:
    """A user's devices file: one table per id, the catalog's format."""
    p = Path(path)
    return devices_from_tables(read_toml(p, option="--devices-file"), str(p))


@functools.lru_cache(maxsize=1)
def catalog() -> dict[str, Device]:
    """The bundled catalog, in file order."""
    data = resources.files("smmf_plan").joinpath("data", "devices.toml").read_bytes()
    return devices_from_tables(loads(data.decode("utf-8"), "catalog"), "catalog")


def pyproject_devices(start: str | Path | None = None) -> dict[str, Device]:
    """Devices under ``[tool.smmf-plan.devices]`` of the nearest pyproject.toml (none: empty)."""
    path = find_pyproject(start)
    if path is None:
        return {}
    section = tool_table(read_toml(path))
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise PlanError(f"{path}: [tool.smmf-plan] must be a table")
    tables = section.get("devices")
    if tables is None:
        return {}
    return devices_from_tables(tables, f"{path} [tool.smmf-plan.devices]")


def list_devices(extra_files: Iterable[str | Path] = (), *, search_from: str | Path | None = None,
                 use_pyproject: bool = True) -> list[Device]:
    """Catalog entries, then the user's (pyproject.toml first, then each ``extra_files`` in order);
    a user entry with a catalog id replaces that entry in place."""
    merged = dict(catalog())
    if use_pyproject:
        merged.update(pyproject_devices(search_from))
    for path in extra_files:
        merged.update(load_devices_file(path))
    return list(merged.values())


def ad_hoc(text: str) -> Device:
    """``512MiB`` / ``4GB`` as a device: usable = total, CPU allocator, PyTorch unknown."""
    try:
        n = parse_size(text, "--device")
    except PlanError as e:
        if "negative" not in str(e):
            raise
        n = -1
    if n <= 0:
        raise PlanError(f"--device {text!r}: a memory budget must be positive, e.g. 512MiB")
    label = text.strip().replace(" ", "")
    return Device(
        id=label, name=f"ad-hoc budget of {format_bytes(n, 2)}", total_bytes=n, usable_bytes=n,
        memory_kind="host RAM", allocator="cpu",
        usable_basis="ad-hoc size given on the command line: all of it is assumed usable "
                     "(no OS or runtime overhead subtracted), CPU allocator rounding",
        origin="ad-hoc",
    )


def get_device(text: str, extra_files: Iterable[str | Path] = (), *,
               search_from: str | Path | None = None, use_pyproject: bool = True) -> Device:
    """A device by catalog or user id (any case), or an ad-hoc size such as ``512MiB``.

    Unknown names raise :class:`PlanError` with the closest ids as suggestions."""
    if not isinstance(text, str) or not text.strip():
        raise PlanError("--device is empty: give a device id (smmf-plan devices lists them) or a size "
                        "such as 512MiB")
    devices = {d.id: d for d in list_devices(extra_files, search_from=search_from,
                                              use_pyproject=use_pyproject)}
    key = text.strip().lower()
    if key in devices:
        return devices[key]
    if key.lstrip("+-")[:1].isdigit() or key.lstrip("+-")[:1] == ".":
        try:
            return ad_hoc(text)
        except PlanError as e:
            if "positive" in str(e):
                raise
            raise PlanError(f"--device {text!r} is neither a device id nor a size: write e.g. "
                            "512MiB, 4GB or 1.5GiB, or a catalog id (smmf-plan devices)") from None
    prefixed = [d for d in devices if d.startswith(key)]
    close = list(dict.fromkeys(prefixed + difflib.get_close_matches(key, list(devices), n=3,
                                                                    cutoff=0.5)))[:3]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise PlanError(f"unknown device {text!r}: {hint}(smmf-plan devices lists them; "
                    "or give a size such as 512MiB)")
