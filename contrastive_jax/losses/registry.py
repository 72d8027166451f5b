"""The method registry: one entry per contrastive method, read by the trainer and the config checks.

A method is its loss function plus what the trainer has to know to call it (:class:`Method`): the
batch inputs it takes after ``features`` (by position), the keyword options a config may set in
``loss.contrastive``, and an optional hook run once on the training labels before training (AdaCon's
ECDF of the labels, Eq. 5; ACCon's label range R, Eq. 2). The trainer's objective (AdaCon Eq. 8,
``gamma_reg L_reg + gamma_con L_con``) then computes ``L_con`` as

    method.loss(features, *[batch input for name in method.inputs], **options, **prepared,
                axis_name=AXIS)

Adding a method is one :func:`register` call below (or from user code, e.g. a test).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
from typing import Any, Callable, Iterator, Optional, Tuple

from contrastive_jax.losses.accon import accon
from contrastive_jax.losses.accon import resolve_label_range
from contrastive_jax.losses.adacon import adacon
from contrastive_jax.losses.adacon import prepare_ecdf
from contrastive_jax.losses.binary import binary_contrastive
from contrastive_jax.losses.binary import binary_contrastive_combo
from contrastive_jax.losses.conr import conr
from contrastive_jax.losses.dcl import dcl
from contrastive_jax.losses.dystress import dystress
from contrastive_jax.losses.metric_learning import adaptive_triplet
from contrastive_jax.losses.metric_learning import npair
from contrastive_jax.losses.mio import mio
from contrastive_jax.losses.ranksim import ranksim
from contrastive_jax.losses.rnc import rnc
from contrastive_jax.losses.supcon import simclr
from contrastive_jax.losses.supcon import supcon
from contrastive_jax.losses.supremix import supremix

# The batch inputs the train step provides: 'labels' (``[b]``, natural units), 'preds'
# (``[b, views]`` stop-gradient predictions of the regression branch, natural units) and 'key' (a
# PRNG key of the step, the same on every device).
BATCH_INPUTS = ("labels", "preds", "key")
# The execution-mode options of the pairwise losses that have one (``loss.impl`` / ``loss.tile`` /
# ``loss.matmul_dtype`` in a config; see ``pairwise.blockwise``).
PAIRWISE_OPTIONS = ("impl", "tile", "matmul_dtype")
# Names a config cannot use for a method (the trainer passes them itself).
RESERVED = ("none",)


@dataclasses.dataclass(frozen=True)
class Method:
  """How the trainer calls one contrastive loss.

  Attributes:
    loss: ``loss(features [b, views, dim], *inputs, **options, axis_name=None) -> scalar``.
    inputs: the :data:`BATCH_INPUTS` the loss takes after ``features``, in its positional order.
    options: the loss's keyword arguments a config may set in ``loss.contrastive`` (and, for those
      in :data:`PAIRWISE_OPTIONS`, ``loss.impl`` / ``loss.tile`` / ``loss.matmul_dtype``); any
      other key there is refused as a typo.
    prepare: optional ``prepare(train_labels [N], loss_cfg) -> dict``, run once before training on
      the training split's labels (NumPy) and the config's ``loss`` section. Entries named by an
      ``option`` (plain values, e.g. ACCon's label range) fill that option in the run's config,
      where they are recorded with it; the others (arrays or pytrees, e.g. AdaCon's ECDF) are passed
      to the loss as keyword arguments at every step, inside the jitted step. The hook leaves an
      option the config already sets alone.
  """

  loss: Callable[..., Any]
  inputs: Tuple[str, ...] = ("labels",)
  options: Tuple[str, ...] = ()
  prepare: Optional[Callable[[Any, Any], dict]] = None

  def __post_init__(self):
    if not callable(self.loss):
      raise ValueError(f"Method.loss must be callable; got {self.loss!r}.")
    for field in ("inputs", "options"):
      value = getattr(self, field)
      if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Method.{field} must be a tuple of names; got {value!r}.")
      object.__setattr__(self, field, tuple(value))
    unknown = [name for name in self.inputs if name not in BATCH_INPUTS]
    if unknown:
      raise ValueError(f"Method.inputs {unknown} are not batch inputs; expected names from "
                       f"{BATCH_INPUTS} (values computed from the training labels come from "
                       "`prepare`).")
    both = sorted(set(self.inputs) & set(self.options))
    if both:
      raise ValueError(f"{both} named both as Method.inputs and Method.options.")
    if self.prepare is not None and not callable(self.prepare):
      raise ValueError(f"Method.prepare must be None or callable; got {self.prepare!r}.")

  def check_signature(self) -> None:
    """Raises a ValueError unless ``loss`` takes ``features``, then :attr:`inputs` by position, and
    every option by keyword (``**kwargs`` accepts any option)."""
    params = list(inspect.signature(self.loss).parameters.values())
    positional = [p.name for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:1 + len(self.inputs)]
    if positional != list(self.inputs):
      raise ValueError(f"{_name(self.loss)} takes {positional} after `features`; Method.inputs "
                       f"declares {list(self.inputs)}.")
    if any(p.kind is p.VAR_KEYWORD for p in params):
      return
    keywords = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    missing = [name for name in self.options + ("axis_name",) if name not in keywords]
    if missing:
      raise ValueError(f"{_name(self.loss)} has no keyword argument(s) {missing} (declared in "
                       "Method.options, or `axis_name`, which the trainer passes).")


def _name(fn) -> str:
  return getattr(fn, "__qualname__", None) or repr(fn)


_REGISTRY: dict = {}


def register(name: str, method: Method) -> None:
  """Registers ``method`` under ``name`` (``config.method``). Raises a ValueError if the name is
  taken (:func:`unregister` it first), reserved, or the method's declared inputs / options do not
  match its loss's signature."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"A method name must be a non-empty string; got {name!r}.")
  if name in RESERVED:
    raise ValueError(f"{name!r} is reserved (config.method='none' is the regression baseline).")
  if not isinstance(method, Method):
    raise ValueError(f"register({name!r}, ...) takes a Method; got {type(method).__name__}.")
  if name in _REGISTRY:
    raise ValueError(f"A method named {name!r} is already registered; unregister it first.")
  method.check_signature()
  _REGISTRY[name] = method


def unregister(name: str) -> Method:
  """Removes and returns the method registered under ``name`` (ValueError if there is none)."""
  if name not in _REGISTRY:
    raise ValueError(f"No method named {name!r} is registered; registered: {names()}.")
  return _REGISTRY.pop(name)


def get_method(name: str) -> Method:
  """The method registered under ``name`` (ValueError listing the registered names)."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown contrastive method {name!r}; expected one of {names()}.")
  return _REGISTRY[name]


def names() -> Tuple[str, ...]:
  """The registered method names, sorted."""
  return tuple(sorted(_REGISTRY))


class LossView(collections.abc.Mapping):
  """Read-only ``name -> loss function`` view of the registry (``losses.CONTRASTIVE_LOSSES``)."""

  def __getitem__(self, name: str) -> Callable:
    return _REGISTRY[name].loss

  def __iter__(self) -> Iterator[str]:
    return iter(names())

  def __len__(self) -> int:
    return len(_REGISTRY)

  def __repr__(self) -> str:
    return f"LossView({dict(self)!r})"


# ------------------------------------------------------------------------------------------------
# The built-in methods.

_SUPCON = ("temperature", "base_temperature") + PAIRWISE_OPTIONS
register("simclr", Method(simclr, inputs=(), options=_SUPCON))
register("supcon", Method(supcon, options=_SUPCON))
register("adacon", Method(adacon, options=("temperature",) + PAIRWISE_OPTIONS,
                          prepare=prepare_ecdf))
register("accon", Method(accon, options=("label_range", "temperature", "bin_width", "epsilon",
                                         "official", "base_temperature") + PAIRWISE_OPTIONS,
                         prepare=resolve_label_range))
register("rnc", Method(rnc, options=("temperature", "impl", "tile", "variant", "search_method",
                                     "search_radix_bits")))
register("supremix", Method(supremix, inputs=("labels", "key"),
                            options=("temperature", "window", "beta", "alphas", "official",
                                     "chunk_elements")))
register("conr", Method(conr, inputs=("labels", "preds"),
                        options=("window", "temperature", "e", "weights", "official",
                                 "angle_range")))
register("ranksim", Method(ranksim, inputs=("labels", "key"), options=("lambda_",)))
register("npair", Method(npair, options=("normalize", "l2_reg")))
register("adaptive_triplet", Method(adaptive_triplet, options=("margin_scale", "mining", "distance",
                                                               "chunk_elements")))
register("binary_contrastive", Method(binary_contrastive, inputs=(),
                                      options=("temperature", "nu") + PAIRWISE_OPTIONS))
register("binary_contrastive_combo", Method(
    binary_contrastive_combo, inputs=(),
    options=("temperature", "contr_temperature", "contr_weight", "nu", "normalize_contr")
    + PAIRWISE_OPTIONS))
register("mio", Method(mio, inputs=(), options=("temperature", "version") + PAIRWISE_OPTIONS))
register("dcl", Method(dcl, inputs=(), options=("temperature", "sigma") + PAIRWISE_OPTIONS))
register("dystress", Method(dystress, inputs=(),
                            options=("tau_min", "tau_max", "profile", "shift", "scale", "rate",
                                     "grad_through_temperature") + PAIRWISE_OPTIONS))
