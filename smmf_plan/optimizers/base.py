"""The records the optimizer registry is made of (torch-free).

* :class:`StateTensor`: one tensor an optimizer keeps for a parameter.
* :class:`Option`: one key of an optimizer's variant grammar (``adafactor:beta1=none``).
* :class:`Requirement`: the pip distribution and module that provide an implementation.
* :class:`ParamGroup`: which parameters an optimizer treats alike (one torch param group).
* :class:`OptimizerInfo`: every fact of one optimizer family, frozen.
* :class:`OptimizerVariant`: a family configured by an id as the user wrote it; what the planner,
  the probe and the renderers call.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from .. import allocators, dtypes
from ..shapes import ParamSpec, Shape

#: the code paths an optimizer step can take (torch's vocabulary): one kernel launch sequence per
#: parameter, one per group of parameters (``foreach``), or one fused kernel.
CODE_PATHS = ("for-loop", "foreach", "fused")
#: ``paths`` of an implementation with the for-loop only, on both devices.
LOOP_ONLY = {"cpu": ("for-loop",), "cuda": ("for-loop",)}
#: ``paths`` of one whose default is foreach on both devices, the for-loop on request.
FOREACH_FIRST = {"cpu": ("foreach", "for-loop"), "cuda": ("foreach", "for-loop")}
#: ``path_args`` of one that takes ``foreach=`` (torch.optim's and pytorch_optimizer's flag).
FOREACH_FLAG = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}}
#: ``paths`` and ``path_args`` of a torch.optim optimizer: the for-loop by default on CPU, foreach
#: on CUDA, ``fused=True`` on request on both.
TORCH_PATHS = {"cpu": ("for-loop", "foreach", "fused"), "cuda": ("foreach", "for-loop", "fused")}
TORCH_PATH_ARGS = {**FOREACH_FLAG, "fused": {"fused": True}}
#: the devices a code path is chosen for, by the allocator a plan rounds with.
DEVICES = allocators.DEVICE_ALLOCATORS

Options = Mapping[str, Any]


class UnknownOptimizer(ValueError):
    """An optimizer id, variant key or value the registry does not accept (one line, with the fix)."""


class Unsupported(ValueError):
    """The implementation cannot train this model (one line saying which parameter and why), e.g.
    Adam-mini 1.1.1 indexing a 1-D parameter whose name says ``output`` as a matrix."""


@dataclass(frozen=True)
class StateTensor:
    """One tensor in ``optimizer.state[p]``.

    A tensor-subclass state (torchao's low-bit moments) is listed as the plain tensors
    ``__tensor_flatten__`` reports, named ``STATE.INNER`` (``exp_avg.codes``, ``exp_avg.scale``).
    """

    name: str
    shape: Shape
    dtype: str
    #: True where the implementation keeps the tensor in host memory whatever the parameter's
    #: device is (torch Adam's ``step`` without ``fused``/``capturable``).
    on_host: bool = False
    #: True for one tensor object that several parameters' states point at (bitsandbytes' quantile
    #: maps): a parameter's own bytes include it, an optimizer's total counts it once.
    shared: bool = False
    #: the shape of the tensor this state is a view of, when the view keeps a larger storage alive
    #: (GaLore's ``Vh[:rank]`` of a full SVD factor); its bytes are that storage's.
    storage: Shape | None = None
    #: True for CUDA unified ("paged") memory (bitsandbytes' paged optimizers): outside
    #: ``torch.cuda.memory_allocated``, migrated to the host by the driver under memory pressure.
    paged: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.storage or self.shape) * dtypes.ITEMSIZE[self.dtype]

    def allocated(self, allocator: str) -> int:
        """Bytes this tensor costs under ``allocator`` ("cuda", "cpu" or "raw"): the CUDA figure
        counts tensors in the caching allocator only (not host or paged ones), each rounded up to
        512 B (as ``torch.cuda.memory_allocated`` reports); the CPU figure counts every tensor,
        64-B aligned."""
        if allocator == "cuda" and (self.on_host or self.paged):
            return 0
        return allocators.get(allocator).round(self.nbytes)


# --------------------------------------------------------------------------- variant grammar
# The small records are NamedTuples (immutable, and ~20× cheaper to define than a dataclass: the
# CLI imports this module to print its --optimizer help).
class Interval(NamedTuple):
    """A closed or half-open range of numbers, printed as in mathematics: ``[0, 1)``."""

    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = True

    def __contains__(self, x: float) -> bool:
        lo_ok = self.low is None or (x >= self.low if self.low_closed else x > self.low)
        hi_ok = self.high is None or (x <= self.high if self.high_closed else x < self.high)
        return lo_ok and hi_ok

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return (("[" if self.low_closed and self.low is not None else "(") + f"{lo}, {hi}"
                + ("]" if self.high_closed and self.high is not None else ")"))


#: the prefix of a :attr:`OptimizerInfo.dist_caveats` entry saying the implementation does not run
#: under that scheme (a test holds each such entry to a real failing run).
DOES_NOT_RUN = "does not run: "
#: what ZeRO hands every client optimizer (a caveat for optimizers whose state depends on shape).
ZERO_FLAT = ("DeepSpeed hands the client optimizer one flat 1-D fp32 tensor per parameter group "
             "(plan only, not run): ")

#: how the built-in entries were checked (``OptimizerInfo.verified``).
VERIFIED_BY_TESTS = ("one real step per parameter (names, shapes, dtypes, bytes) and a measured "
                     "step's temporaries on every CPU code path, in tests")

#: the value kinds an option can take; each has one parser below.
KINDS = ("bool", "float", "float|none", "int", "int|none", "choice")


class Option(NamedTuple):
    """One ``key=value`` of the variant grammar; ``kind`` is one of :data:`KINDS`."""

    default: Any
    kind: str
    help: str
    #: numeric range the value must lie in (``None``: any number); ``none`` is always accepted
    #: by ``float|none`` and ``int|none`` options.
    range: Interval | None = None
    #: the accepted words of a ``choice`` option.
    choices: tuple[str, ...] = ()

    def parse(self, text: str) -> Any:
        """The value ``text`` stands for; ``ValueError`` with the valid range/choices otherwise."""
        t = text.strip().lower()
        if self.kind == "bool":
            if t in ("1", "true", "yes", "on"):
                return True
            if t in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, got {text!r}")
        if self.kind == "choice":
            if t not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}, got {text!r}")
            return t
        if self.kind.endswith("|none") and t in ("none", "null", "off"):
            return None
        try:
            value = int(t) if self.kind.startswith("int") else float(t)
        except ValueError:
            want = {"int": "a whole number", "int|none": "a whole number or none",
                    "float": "a number"}.get(self.kind, "a number or none")
            raise ValueError(f"expected {want}, got {text!r}") from None
        if not math.isfinite(value) or (self.range is not None and value not in self.range):
            raise ValueError(f"{text.strip()} is out of range: valid {self.valid}")
        return value

    @property
    def valid(self) -> str:
        """The accepted values in words: ``[0, 1) or none``, ``true | false``, ``packed | bool``."""
        if self.kind == "bool":
            return "true | false"
        if self.kind == "choice":
            return " | ".join(self.choices)
        text = str(self.range or Interval())
        return text + (" or none" if self.kind.endswith("|none") else "")

    def to_dict(self) -> dict:
        return {"default": self.default, "type": self.kind, "valid": self.valid,
                "choices": list(self.choices) or None, "help": self.help}


# --------------------------------------------------------------------------- implementation
class Requirement(NamedTuple):
    """Where an implementation comes from: a pip distribution, the module to look for, and the
    smmf-plan extra that installs it (``None``: a base dependency or this package). ``source``
    names the code of an implementation no package registry has (COAP's GitHub repository): the
    layout is read from that source, and the entry runs only where the user installed it."""

    distribution: str
    module: str
    extra: str | None = None
    source: str | None = None

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:  # a dotted module whose parent package is missing
            return False

    def install_hint(self) -> str:
        if self.source:
            return f"not on PyPI: install it from {self.source}"
        if self.extra:
            return f"the '{self.extra}' extra: pip install 'smmf-plan[{self.extra}]'"
        return (f"a dependency of smmf-plan: pip install '{self.distribution}', or reinstall "
                "smmf-plan without --no-deps")

    def to_dict(self) -> dict:
        return {"distribution": self.distribution, "module": self.module, "extra": self.extra,
                "source": self.source}


class Implementation(NamedTuple):
    """One implementation a family is planned for. A family with several (``adamw8bit``:
    bitsandbytes or torchao) lists the others in :attr:`OptimizerInfo.impls`, chosen by its
    ``impl`` option; ``paths`` overrides the family's code paths where that implementation's
    differ."""

    implementation: str
    requires: Requirement
    reproduces: str
    paths: Mapping[str, tuple[str, ...]] | None = None

    def to_dict(self) -> dict:
        d = {"implementation": self.implementation, "requires": self.requires.to_dict(),
             "reproduces": self.reproduces}
        if self.paths:
            d["paths"] = {k: list(v) for k, v in self.paths.items()}
        return d


class ParamGroup(NamedTuple):
    """Parameters an optimizer treats alike: one torch param group. ``indices`` point into the
    trainable specs the rule was given; ``hyper`` are the group's own constructor keys (e.g.
    ``{"use_muon": True}``); ``name`` is what :attr:`OptimizerInfo.state` receives."""

    name: str
    indices: tuple[int, ...]
    hyper: Mapping[str, Any] = MappingProxyType({})


def one_group(opts: Options, specs: Sequence[ParamSpec]) -> list[ParamGroup]:
    """The default parameter-group rule: every parameter in one group named ``default``."""
    return [ParamGroup("default", tuple(range(len(specs))))]


#: ``state(options, spec, group) -> [StateTensor]``: what one parameter of ``group`` keeps.
StateRule = Callable[[Options, ParamSpec, str], list[StateTensor]]
#: ``shard_state(options, spec, local_shape, group) -> [StateTensor]``: what one rank keeps for
#: the dim-0 shard of local shape ``local_shape`` of the parameter ``spec`` (FSDP2).
ShardStateRule = Callable[[Options, ParamSpec, Shape, str], list[StateTensor]]
#: ``rule(options, trainable_specs, quantum) -> bytes``: peak temporaries of one step on a path.
TempRule = Callable[[Options, Sequence[ParamSpec], int], int]
GroupRule = Callable[[Options, Sequence[ParamSpec]], list[ParamGroup]]


@dataclass(frozen=True, kw_only=True)
class OptimizerInfo:
    """Every fact of one optimizer family. Module-level constants in ``smmf_plan/optimizers/``,
    listed once in :mod:`.registry`."""

    #: registry id (``adam``, ``smmf`` ...): the head of every variant id.
    id: str
    #: how tables name it (``AdamW``), and how the SMMF paper's tables do (``None``: not in them).
    display_name: str
    paper_name: str | None = None
    #: one line for ``smmf-plan optimizers``.
    summary: str
    #: ``"module:attribute"`` of the real implementation, imported only by :meth:`load`.
    implementation: str
    requires: Requirement
    #: the implementation and version the layout and temporaries were read from and checked
    #: against (``torch.optim.Adam, torch 2.14.1``), and how they were checked.
    reproduces: str
    verified: str
    #: the variant grammar: ``NAME:key=value,...`` sets these.
    options: Mapping[str, Option] = field(default_factory=dict)
    state: StateRule
    #: peak step temporaries per code path (``CODE_PATHS``).
    temporaries: Mapping[str, TempRule]
    #: per device ("cpu", "cuda"): the code paths the implementation has there, the one it takes
    #: by default first.
    paths: Mapping[str, tuple[str, ...]]
    #: constructor arguments that make the implementation take each code path (none for a path
    #: it takes without being asked, e.g. the only one it has).
    path_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: True when the step's scratch buffers are kept between steps (alive during the next forward
    #: and backward too, so never netted against the activations).
    keeps_scratch: bool = False
    #: learning rate the probe trains with (its few steps must visibly lower the loss).
    probe_lr: float
    #: ``constructor(options) -> kwargs`` for the implementation (hyper-parameters override them).
    constructor: Callable[[Options], dict[str, Any]]
    #: which parameters form which torch param group (default: one group).
    groups: GroupRule = one_group
    #: the state one rank keeps when the parameter is sharded on dim 0 (FSDP2) and the rank holds
    #: a shard of local shape ``local_shape``. ``None`` (the default): the optimizer sees the
    #: shard as a tensor of its own, so its state is ``state`` of a parameter of the local shape
    #: (Adam: local moments + ``step``). An optimizer whose state describes the whole tensor
    #: (SMMF's factors of the full square-matricized matrix) says so here.
    shard_state: ShardStateRule | None = None
    #: what a distributed plan must say beside this optimizer's bytes, per scheme (``fsdp2``,
    #: ``ddp``, or ``zero`` for every ZeRO stage): that its implementation does not run there
    #: (starting with :data:`DOES_NOT_RUN`; measured), or how the engine changes what it
    #: factorizes.
    dist_caveats: Mapping[str, str] = field(default_factory=dict)
    #: implementations other than the default one, by the value of the ``impl`` option.
    impls: Mapping[str, Implementation] = field(default_factory=dict)
    #: True when the implementation takes ``(name, parameter)`` pairs and decides by the names
    #: (Adam-mini); :meth:`OptimizerVariant.build` then passes the model's names.
    named_params: bool = False
    #: the constructor keyword that takes the parameter groups (``None``: the first positional
    #: argument; COAP's ``grouped_params_with_proj`` skips its own grouping).
    params_keyword: str | None = None
    #: options that default to a fact of the model being planned: ``{option: fact}`` with facts
    #: from :func:`smmf_plan.model.model_facts` (Adam-mini's ``dim`` = ``hidden_size``).
    binds: Mapping[str, str] = field(default_factory=dict)
    #: the rule deciding which parameters the optimizer treats specially, stated in outputs
    #: (``None``: it treats every parameter alike).
    target_rule: str | None = None
    #: a call the built optimizer needs before its first step (Schedule-Free's ``train()``).
    prepare: Callable[[Any], Any] | None = None
    #: ``peak_step(options) -> k``: the step (1-based) whose temporaries the rules give: a
    #: periodic refresh's where there is one (GaLore's SVD every ``update_proj_gap`` steps,
    #: SOAP's eigenbasis every 10), else any step after the state exists. Tests measure it.
    peak_step: Callable[[Options], int] = lambda o: 3

    def load(self, implementation: str | None = None):
        """Import and return the implementation (``ImportError`` when it is not installed)."""
        module, _, attr = (implementation or self.implementation).partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    @property
    def default_impl(self) -> Implementation:
        return Implementation(self.implementation, self.requires, self.reproduces)

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.options.items()}

    def default_path(self, device: str) -> str:
        return self.paths[device][0]

    def to_dict(self) -> dict:
        """The JSON form ``smmf-plan optimizers --json`` prints (registry-level fields are added
        there)."""
        return {
            "id": self.id, "display_name": self.display_name, "paper_name": self.paper_name,
            "summary": self.summary, "implementation": self.implementation,
            "requires": self.requires.to_dict(), "reproduces": self.reproduces,
            "verified": self.verified,
            "options": {k: o.to_dict() for k, o in self.options.items()},
            "temporaries": {"paths": {d: list(p) for d, p in self.paths.items()},
                            "default_path": {d: p[0] for d, p in self.paths.items()}},
            "keeps_scratch": self.keeps_scratch, "probe_lr": self.probe_lr,
            "path_args": {p: dict(a) for p, a in self.path_args.items()},
            "dist_caveats": dict(self.dist_caveats),
            "impls": {k: i.to_dict() for k, i in self.impls.items()},
            "binds": dict(self.binds), "target_rule": self.target_rule,
        }


def device_of(allocator: str) -> str:
    """The device whose default code path applies for a plan rounded with ``allocator`` (``raw``
    plans are CPU plans)."""
    return "cuda" if allocator == "cuda" else "cpu"


class OptimizerVariant:
    """A family configured by a variant id: ``OptimizerVariant(info, "smmf:sign=bool", sign="bool")``.
    Created by :func:`smmf_plan.optimizers.parse`."""

    def __init__(self, info: OptimizerInfo, id: str | None = None, **options: Any) -> None:
        unknown = set(options) - set(info.options)
        if unknown:
            raise UnknownOptimizer(f"{info.id} has no option {', '.join(sorted(unknown))}")
        self.info = info
        #: the id exactly as the user wrote it (the key of every per-optimizer result).
        self.id = id if id is not None else info.id
        self.options: Options = MappingProxyType({**info.defaults, **options})

    # ---------------------------------------------------------------- identity
    @property
    def family(self) -> str:
        return self.info.id

    @property
    def impl(self) -> Implementation:
        """The implementation this variant plans for (its ``impl`` option, else the default)."""
        return self.info.impls.get(self.options.get("impl")) or self.info.default_impl

    @property
    def requires(self) -> Requirement:
        return self.impl.requires

    @property
    def paths(self) -> Mapping[str, tuple[str, ...]]:
        """Code paths per device of this variant's implementation."""
        return self.impl.paths or self.info.paths

    def bind(self, facts: Mapping[str, Any]) -> "OptimizerVariant":
        """This variant with the options :attr:`OptimizerInfo.binds` names, which the user left
        unset, taken from the model's ``facts`` (unknown facts stay unset)."""
        fill = {opt: facts[fact] for opt, fact in self.info.binds.items()
                if self.options.get(opt) is None and facts.get(fact) is not None}
        if not fill:
            return self
        given = {k: v for k, v in self.options.items() if v != self.info.options[k].default}
        return OptimizerVariant(self.info, self.id, **{**given, **fill})

    @property
    def keeps_scratch(self) -> bool:
        return self.info.keeps_scratch

    @property
    def probe_lr(self) -> float:
        return self.info.probe_lr

    def missing_requirement(self) -> str | None:
        """A one-line message when the implementation is not installed, else ``None``."""
        req = self.requires
        if req.installed():
            return None
        return f"{self.id} needs {req.distribution} ({req.install_hint()}), which is not installed"

    # ---------------------------------------------------------------- state
    def param_groups(self, specs: Sequence[ParamSpec]) -> list[ParamGroup]:
        """The parameter groups of ``specs`` (the trainable ones, in the optimizer's order)."""
        return self.info.groups(self.options, specs)

    def group_names(self, specs: Sequence[ParamSpec]) -> list[str]:
        """The group each spec falls in, in order."""
        if self.info.groups is one_group:
            return ["default"] * len(specs)
        names = [""] * len(specs)
        for g in self.param_groups(specs):
            for i in g.indices:
                names[i] = g.name
        return names

    def state(self, spec: ParamSpec, group: str | None = None) -> list[StateTensor]:
        """The tensors one parameter keeps (its group found from ``spec`` alone unless given)."""
        if group is None:
            group = self.group_names([spec])[0]
        return self.info.state(self.options, spec, group)

    def state_key(self, spec: ParamSpec, group: str) -> tuple:
        """What :meth:`state` depends on, for planners that call it once per kind of tensor: the
        shape, dtype and group, and the name for optimizers that decide by names
        (:attr:`OptimizerInfo.named_params`: Adam-mini's per-head rules)."""
        return (spec.shape, spec.dtype, group, spec.name if self.info.named_params else None)

    def state_bytes(self, spec: ParamSpec) -> int:
        return sum(t.nbytes for t in self.state(spec))

    def shard_state(self, spec: ParamSpec, local_shape: Shape, group: str | None = None
                    ) -> list[StateTensor]:
        """The tensors one rank keeps for its dim-0 shard of ``spec`` (local shape
        ``local_shape``, possibly with 0 rows): :attr:`OptimizerInfo.shard_state`, by default the
        state of a parameter of the local shape."""
        if group is None:
            group = self.group_names([spec])[0]
        local = tuple(local_shape)
        if self.info.shard_state is not None:
            return self.info.shard_state(self.options, spec, local, group)
        if local == tuple(spec.shape):
            return self.info.state(self.options, spec, group)
        return self.info.state(self.options, local_spec(spec, local), group)

    def allocated_bytes(self, spec: ParamSpec, allocator: str) -> int:
        return sum(t.allocated(allocator) for t in self.state(spec))

    # ---------------------------------------------------------------- step temporaries
    def code_path(self, allocator: str = "raw") -> str:
        """The path the step takes for a plan rounded with ``allocator``: what a ``fused`` or
        ``foreach`` option asks for, else the implementation's default on that device."""
        if self.options.get("fused"):
            return "fused"
        if self.options.get("foreach") is not None:
            return "foreach" if self.options["foreach"] else "for-loop"
        return self.paths[device_of(allocator)][0]

    def step_temp_bytes(self, specs: Sequence[ParamSpec], allocator: str = "raw", *,
                        path: str | None = None) -> int:
        """Peak bytes one ``step()`` allocates beyond weights, gradients and state, over the
        trainable ``specs`` in the order the optimizer sees them, each temporary rounded as
        ``allocator`` rounds; ``path`` overrides :meth:`code_path`."""
        path = path or self.code_path(allocator)
        rule = self.info.temporaries.get(path)
        if rule is None:
            raise ValueError(f"{self.id} has no {path} code path "
                             f"(it has: {', '.join(self.info.temporaries)})")
        trainable = [s for s in specs if s.trainable and s.numel > 0]
        if not trainable:
            return 0
        return rule(self.options, trainable, allocators.get(allocator).quantum)

    # ---------------------------------------------------------------- the real optimizer
    def build(self, params: Iterable, *, path: str | None = None, **hyper: Any):
        """The real optimizer over ``params``: tensors, ``(name, tensor)`` pairs,
        ``(ParamSpec, tensor)`` pairs (the specs the plan was made from, so that the parameter
        groups are the planned ones) or torch param group dicts; imports torch and the
        implementation. ``path`` forces a code path (:attr:`OptimizerInfo.path_args`); ``hyper``
        overrides the variant's constructor arguments (``lr=...``)."""
        if self.impl.implementation is None:
            raise Unsupported(self.missing_requirement() or f"{self.id} has no implementation")
        cls = self.info.load(self.impl.implementation)
        if path is not None and path not in self.info.temporaries:
            raise ValueError(f"{self.id} has no {path} code path")
        forced = self.info.path_args.get(path, {}) if path else {}
        kwargs = {**self.info.constructor(self.options), **forced, **hyper}
        groups = self._torch_groups(list(params))
        if self.info.params_keyword:
            optimizer = cls(**{self.info.params_keyword: groups}, **kwargs)
        else:
            optimizer = cls(groups, **kwargs)
        if self.info.prepare is not None:
            self.info.prepare(optimizer)
        return optimizer

    def _torch_groups(self, params: list) -> list:
        if not params or isinstance(params[0], dict):
            return params
        named = [p if isinstance(p, tuple) else (str(i), p) for i, p in enumerate(params)]
        if self.info.named_params:
            return [(s.name if isinstance(s, ParamSpec) else s, t) for s, t in named]
        if self.info.groups is one_group:
            return [t for _, t in named]
        specs = [s if isinstance(s, ParamSpec)
                 else ParamSpec(s, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                 for s, t in named]
        return [{"params": [named[i][1] for i in g.indices], **g.hyper}
                for g in self.param_groups(specs) if g.indices]

    def __repr__(self) -> str:
        return f"<optimizer {self.id}>"


def local_spec(spec: ParamSpec, local_shape: Shape) -> ParamSpec:
    """``spec`` with the shape of one rank's shard (every other fact kept: name, dtype,
    trainability, whether it is a Linear weight or the output head)."""
    return replace(spec, shape=tuple(local_shape))


def param_dtype(spec: ParamSpec) -> str:
    return dtypes.canonical(spec.dtype)
