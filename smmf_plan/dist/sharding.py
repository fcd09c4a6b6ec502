"""How training is spread over ranks: :class:`Sharding`, one frozen record (torch-free).

``Sharding(scheme, world, nodes, shard_group)`` plus the engine settings that change what a rank
keeps, each with the engine's own default:

* ``ddp``: torch ``DistributedDataParallel`` — every rank keeps everything; gradients are copied
  into flat buckets (``bucket_cap_mb``, 25 MiB; the first bucket 1 MiB).
* ``zero1`` / ``zero2`` / ``zero3``: DeepSpeed ZeRO stages 1-3 — optimizer states, then gradients,
  then parameters partitioned across the ranks (``reduce_bucket_size`` 5e8 elements,
  ``sub_group_size`` 1e9, ``stage3_param_persistence_threshold`` 1e5, ``stage3_prefetch_bucket_size``
  5e7: DeepSpeed's defaults).
* ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` — every parameter sharded on dim 0 across
  ``shard_group`` ranks (default: the whole world). A ``shard_group`` smaller than the world is
  HSDP: a 2-D device mesh ``(replicate, shard)`` of ``world / shard_group`` replicas, rank ``r``
  holding shard ``r % shard_group``. ``reshard_after_forward`` (True) frees each unit's gathered
  parameters after its forward.

``nodes`` says how the world is laid out on hosts (``world / nodes`` ranks each); it must divide
the world. Every check raises :class:`~smmf_plan.errors.PlanError` with one line naming the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..errors import PlanError

#: the schemes, in the order help texts list them.
SCHEMES: tuple[str, ...] = ("ddp", "zero1", "zero2", "zero3", "fsdp2")
#: what each scheme is, in words.
SCHEME_NAMES: dict[str, str] = {
    "ddp": "DDP (torch DistributedDataParallel)",
    "zero1": "DeepSpeed ZeRO-1 (optimizer states partitioned)",
    "zero2": "DeepSpeed ZeRO-2 (optimizer states and gradients partitioned)",
    "zero3": "DeepSpeed ZeRO-3 (optimizer states, gradients and parameters partitioned)",
    "fsdp2": "FSDP2 (torch fully_shard, parameters sharded on dim 0)",
}
#: the largest world a plan accepts (a guard against typos, far above any real cluster).
MAX_WORLD = 1 << 20


def _whole(value: Any, what: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise PlanError(f"{what} {value!r} is not a whole number: {fix}") from None
    return value


def parse_scheme(text: str) -> str:
    """``--dist`` text → a scheme of :data:`SCHEMES` (``ZeRO-2`` and ``zero_2`` read as zero2)."""
    key = str(text).strip().lower().replace("-", "").replace("_", "")
    if key in SCHEMES:
        return key
    close = difflib.get_close_matches(key, SCHEMES, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise PlanError(f"unknown --dist {text!r}{hint} (use one of {', '.join(SCHEMES)})")


@dataclass(frozen=True)
class Sharding:
    """One distributed layout: a scheme over ``world`` ranks on ``nodes`` hosts."""

    scheme: str
    world: int
    nodes: int = 1
    #: FSDP2 only: ranks each parameter is sharded across (HSDP when below ``world``); ``None``:
    #: the whole world.
    shard_group: int | None = None
    # ---- engine settings (defaults are the engines' own)
    #: DDP ``bucket_cap_mb``.
    bucket_cap_mb: float = 25.0
    #: FSDP2 ``reshard_after_forward`` of every unit but the root (the root never reshards).
    reshard_after_forward: bool = True
    #: ZeRO ``reduce_bucket_size`` (elements).
    reduce_bucket_size: int = 500_000_000
    #: ZeRO ``overlap_comm`` (``None``: DeepSpeed's default, True for stage 3, False below).
    overlap_comm: bool | None = None
    #: ZeRO-3 ``sub_group_size`` (elements of fp32 partition the optimizer steps at once).
    sub_group_size: int = 1_000_000_000
    #: ZeRO-3 ``stage3_param_persistence_threshold``: smaller parameters stay whole on every rank.
    param_persistence_threshold: int = 100_000
    #: ZeRO-3 ``stage3_prefetch_bucket_size`` (elements gathered ahead).
    prefetch_bucket_size: int = 50_000_000

    def __post_init__(self) -> None:
        scheme = parse_scheme(self.scheme)
        object.__setattr__(self, "scheme", scheme)
        world = _whole(self.world, "--world", "give the number of ranks, e.g. --world 8")
        if world < 1:
            raise PlanError(f"--world {world} is not a number of ranks: give a whole number ≥ 1")
        if world > MAX_WORLD:
            raise PlanError(f"--world {world} is more ranks than smmf-plan plans for "
                            f"(at most {MAX_WORLD:,})")
        object.__setattr__(self, "world", world)
        nodes = _whole(self.nodes, "--nodes", "give the number of hosts, e.g. --nodes 2")
        if nodes < 1 or world % nodes:
            raise PlanError(f"--nodes {nodes} does not divide --world {world}: give a number of "
                            f"nodes that divides the world (each node runs world / nodes ranks)")
        object.__setattr__(self, "nodes", nodes)
        if self.shard_group is not None:
            group = _whole(self.shard_group, "--shard-group",
                           "give the ranks each parameter is sharded across, e.g. --shard-group 8")
            if scheme != "fsdp2":
                raise PlanError(f"--shard-group (HSDP) applies to --dist fsdp2, not {scheme}: drop "
                                "it, or use --dist fsdp2")
            if group < 1 or world % group:
                raise PlanError(f"--shard-group {group} does not divide --world {world}: give a "
                                "shard group that divides the world (world / shard group replicas)")
            object.__setattr__(self, "shard_group", None if group == world else group)
        if self.bucket_cap_mb <= 0 or self.reduce_bucket_size < 1 or self.sub_group_size < 1:
            raise PlanError("bucket and sub-group sizes must be positive")

    # ------------------------------------------------------------------ layout
    @property
    def shards(self) -> int:
        """Ranks one parameter (ZeRO: one flat group) is split across: 1 for DDP."""
        if self.scheme == "ddp":
            return 1
        return self.shard_group or self.world

    @property
    def replicas(self) -> int:
        """Copies of each shard in the world (HSDP's replicate dimension; DDP: the world)."""
        return self.world // self.shards

    @property
    def ranks_per_node(self) -> int:
        return self.world // self.nodes

    @property
    def hsdp(self) -> bool:
        return self.scheme == "fsdp2" and self.shard_group is not None

    @property
    def zero_stage(self) -> int | None:
        return int(self.scheme[-1]) if self.scheme.startswith("zero") else None

    @property
    def overlap(self) -> bool:
        """ZeRO's ``overlap_comm`` as DeepSpeed resolves its default."""
        return self.overlap_comm if self.overlap_comm is not None else self.zero_stage == 3

    def global_ranges(self, first: int, last: int) -> list[tuple[int, int]]:
        """The global ranks holding shard ranks ``first..last`` (inclusive), as inclusive ranges:
        one range, or one per replica under HSDP (rank ``r`` holds shard ``r % shard_group``)."""
        s = self.shards
        if self.scheme == "ddp" or s == self.world:
            return [(first, last)]
        if first == 0 and last == s - 1:
            return [(0, self.world - 1)]
        return [(k * s + first, k * s + last) for k in range(self.replicas)]

    # ------------------------------------------------------------------ words
    def describe(self) -> str:
        """``fsdp2 over 64 ranks (8 nodes × 8) · HSDP: sharded across 8, 8 replicas``"""
        text = f"{self.scheme} over {self.world:,} rank{'s' if self.world != 1 else ''}"
        if self.nodes > 1:
            text += f" ({self.nodes} nodes × {self.ranks_per_node})"
        if self.hsdp:
            text += f" · HSDP: sharded across {self.shards}, {self.replicas} replicas"
        return text

    def settings(self) -> dict[str, Any]:
        """The engine settings this scheme reads, by the engine's own names."""
        if self.scheme == "ddp":
            return {"bucket_cap_mb": self.bucket_cap_mb, "gradient_as_bucket_view": False}
        if self.scheme == "fsdp2":
            return {"reshard_after_forward": self.reshard_after_forward}
        out: dict[str, Any] = {"reduce_bucket_size": self.reduce_bucket_size,
                               "contiguous_gradients": True, "overlap_comm": self.overlap}
        if self.zero_stage == 3:
            out.update(sub_group_size=self.sub_group_size,
                       stage3_param_persistence_threshold=self.param_persistence_threshold,
                       stage3_prefetch_bucket_size=self.prefetch_bucket_size)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "world": self.world, "nodes": self.nodes,
                "ranks_per_node": self.ranks_per_node, "shard_group": self.shards,
                "replicas": self.replicas, "settings": self.settings()}
