"""The optimizer registry: every fact of every optimizer smmf-plan plans for, in one place.

One frozen :class:`OptimizerInfo` per family (one module each: :mod:`.adam` holds Adam and AdamW,
:mod:`.adafactor`, :mod:`.came`, :mod:`.sm3`, :mod:`.smmf`, and the zoo: :mod:`.sgd`, :mod:`.lion`,
:mod:`.signum`, :mod:`.lowbit` (8-/4-bit and FP8 AdamW), :mod:`.adam_mini`, :mod:`.galore`,
:mod:`.apollo`, :mod:`.coap`, :mod:`.muon`, :mod:`.soap`, :mod:`.fadam`, :mod:`.ademamix`,
:mod:`.schedulefree`, :mod:`.adalayer`, :mod:`.hfac`) owns its id and variant grammar, the
per-parameter state layout, the step-temporaries rule per code path and which path each device
takes by default, whether step scratch is kept between steps, the probe's learning rate, how to
build the real implementation (import path, requirement, constructor arguments, parameter-group
rule), its display and paper names, and which implementation and version it reproduces.
:func:`parse` turns an id as the user wrote it into an :class:`OptimizerVariant`, which the
planner, the step estimate, the probe, the paper reproduction and the CLI all call. Importing this
package imports no torch; :meth:`OptimizerVariant.build` imports the implementation.

Adding an optimizer
-------------------
Write one module ``smmf_plan/optimizers/NAME.py`` with a module docstring saying what the
implementation keeps and allocates (and why), torch-free at import, defining:

* ``state(options, spec, group) -> [StateTensor]``: the tensors ``optimizer.state[p]`` holds for
  one parameter — a function of the parameter's shape, dtype and group only, or also of its name
  with ``named_params=True`` (planners call it once per :meth:`OptimizerVariant.state_key`) —
  read from the implementation's source (``on_host=True`` for tensors kept on the host,
  ``shared=True`` for one tensor several parameters point at, such as bitsandbytes' quantile maps;
  a tensor subclass is listed as its inner tensors, ``exp_avg.codes``, ``exp_avg.scale``);
* one temporaries rule per code path it has, ``rule(options, specs, quantum) -> bytes`` (the
  helpers in :mod:`.temporaries` cover per-parameter loops, foreach groups and fused kernels);
* ``INFO = OptimizerInfo(...)`` with the id, names, ``implementation="module:Class"``,
  :class:`Requirement`, the variant :class:`Option` s (default, kind, help, valid range), the
  ``paths`` each device has (default first), ``probe_lr``, ``constructor(options) -> kwargs`` and,
  for optimizers that treat parameters differently (Muon's hidden 2-D weights vs. the rest under
  AdamW, GaLore's targeted matrices), a ``groups(options, specs) -> [ParamGroup]`` rule: each
  group's ``name`` is what ``state`` receives and its ``hyper`` become the torch param group's keys
  (:func:`._groups.targeted` is the rule for :data:`smmf_plan.targets.TARGET_RULE`; set
  ``target_rule`` so outputs state it).

Where the implementation needs more, the record says so generically: ``impls`` (several
implementations chosen by an ``impl`` option, each with its own code paths), ``binds`` (options
defaulting to model facts, :func:`smmf_plan.model.model_facts`), ``named_params`` (it classifies
parameters by name), ``params_keyword`` (its constructor takes the groups by keyword),
``prepare`` (a call before the first step), ``peak_step`` (the step a periodic refresh makes the
largest, which the temporaries rule describes and tests measure), ``Requirement.source`` (code no
package registry has: planned from its source, tested against its formulas), and in a layout
``StateTensor.storage`` (a view keeping its base alive) and ``.paged`` (CUDA unified memory). A
``state`` rule raises :class:`Unsupported` where the real implementation fails on a parameter: the
plan then says the optimizer cannot run on that model.

Then add one line ``NAME.INFO,`` to :data:`.registry.FAMILIES` (and its ids to ``ALL_IDS`` if
``--optimizer all`` should compare them), and list the implementation's pip distribution in
``pyproject.toml``'s ``test`` extra (a test fails otherwise). The registry tests then require,
with no further code, that every parameter's state equals the real implementation's after one real
step (bytes, names, shapes, dtypes; :mod:`smmf_plan.measure` flattens tensor subclasses and counts
shared tensors once) on a CNN, a transformer and edge shapes, that every code path has a
temporaries rule measured against a real step on the CPU, and that ``smmf-plan optimizers --json``
lists it. Add the variants whose layout differs from the default to ``LAYOUT_VARIANTS`` in
``tests/test_optimizers_exact.py`` (a test fails until every bool, choice and ``none``-able option
is run with a non-default value).
"""

from .base import (
    CODE_PATHS,
    Implementation,
    Interval,
    OptimizerInfo,
    OptimizerVariant,
    Option,
    ParamGroup,
    Requirement,
    StateTensor,
    UnknownOptimizer,
    Unsupported,
)
from .registry import (
    ALL_IDS,
    DEFAULT_IDS,
    FAMILIES,
    by_paper_name,
    describe,
    get,
    parse,
    parse_many,
    suggest,
)

__all__ = [
    "ALL_IDS", "CODE_PATHS", "DEFAULT_IDS", "FAMILIES", "Implementation", "Interval",
    "OptimizerInfo", "OptimizerVariant", "Option", "ParamGroup", "Requirement", "StateTensor",
    "UnknownOptimizer", "Unsupported", "by_paper_name", "describe", "get", "parse", "parse_many",
    "suggest",
]
