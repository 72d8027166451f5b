"""The jit-compiled, data-parallel train and eval steps (one ``shard_map`` over the 'batch' axis).

Inside the map every device holds its slice of the global batch and a replica of the state. The model
runs on the local views with BatchNorm statistics synchronised over the axis, the contrastive loss
all-gathers features and labels and returns the global mean, the regression loss is ``pmean``-ed, and
``jax.grad`` of that replicated scalar with respect to the replicated parameters is already the global
gradient (shard_map's varying-axis tracking inserts the reduction). Nothing here touches files,
clocks or globals.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from contrastive_jax import data as data_lib
from contrastive_jax.data.pipeline import UINT8_UNIT
from contrastive_jax.losses import regression_loss
from contrastive_jax.train import bmse
from contrastive_jax.train import objectives

AXIS = "batch"
DROPOUT_TAG = 0x0D0  # folded into a step's key to derive its 'dropout' PRNG stream


# `loss.reg_units`: L_reg of the normalised target or in the label's units (defaults.py).
REG_UNITS = ("normalized", "label")

def sample_keys(key: jax.Array, batch_size: int, axis_name: str = AXIS) -> jax.Array:
  """One PRNG key per sample, folded from its global index: the same on any device layout."""
  first = jax.lax.axis_index(axis_name) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(batch_size))


def unit_float(x: jax.Array) -> jax.Array:
  """A uint8 batch (``train_batch(..., scale=False)``) as the float32 ``v / 255`` that the host
  would have made of it, bit for bit (a lookup in ``pipeline.UINT8_UNIT``); others unchanged."""
  return jnp.asarray(UINT8_UNIT)[x.astype(jnp.int32)] if x.dtype == jnp.uint8 else x


SELECT_TAG = 0x5E1  # folded into a sample's key for ``select_fn`` (its views' keys are unchanged)


def augment_views(key, x, num_views: int, augment_fn: Callable,
                  select_fn: Optional[Callable] = None) -> jax.Array:
  """``[b, ...] -> [b, num_views, ...]`` with per-sample keys (see :func:`sample_keys`).

  ``select_fn(key, x_i[None]) -> x_i'[None]``, when given, is applied to each sample once, before
  its views are made, so every view of the sample starts from the same input (e.g. one random
  slice of an MR scan, thesis Sec. 4.5.2.1); it uses ``fold_in(sample key, SELECT_TAG)``.
  """
  keys = sample_keys(key, x.shape[0])

  def one(k, xi):
    xi = xi[None]
    if select_fn is not None:
      xi = select_fn(jax.random.fold_in(k, SELECT_TAG), xi)
    return data_lib.make_views(k, xi, num_views, augment_fn)[0]
  return jax.vmap(one)(keys, x)


def augment_given_views(key, x, augment_fn: Callable) -> jax.Array:
  """``[b, V, ...]`` views cut on the host (``data.pipeline.HostCrop``) -> each augmented alone:
  view ``v`` of sample ``i`` with ``split(sample key i, V)[v]``, the keys :func:`augment_views` gives
  view ``v`` of a sample."""
  keys = sample_keys(key, x.shape[0])
  one_view = lambda k, xv: augment_fn(k, xv[None])[0]
  one = lambda k, xi: jax.vmap(one_view)(jax.random.split(k, xi.shape[0]), xi)
  return jax.vmap(one)(keys, x)


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves))


def apply_if_finite(state, grads, batch_stats, finite: jax.Array):
  """``state.apply_gradients(grads, batch_stats)`` where ``finite``, else ``state`` with only its
  step advanced (params, optimizer state and BatchNorm statistics kept, under ``jnp.where``: no
  Python branch, no host sync). Shared by every task's train step."""
  updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  keep = lambda new, old: jnp.where(finite, new, old)
  return updated.replace(
      params=jax.tree.map(keep, updated.params, state.params),
      opt_state=jax.tree.map(keep, updated.opt_state, state.opt_state),
      batch_stats=jax.tree.map(keep, updated.batch_stats, state.batch_stats))


def guarded_update(state, loss: jax.Array, grads, batch_stats):
  """A task step's guarded update: :func:`apply_if_finite` where the loss and the gradient norm are
  finite, with the step's ``grad_norm`` and ``nonfinite`` (1: the update was not applied) metrics.
  Shared by the jigsaw, CoWPro, MRNet and fine-tuning steps."""
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  return apply_if_finite(state, grads, batch_stats, finite), {
      "grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}


def embedding_cache_grads(model, params, batch_stats, rows: jax.Array, objective: Callable,
                          micro_batch: int, outputs, dropout_key, axis_name: str = AXIS,
                          unroll: Optional[bool] = None):
  """Loss and gradient of ``objective(model outputs of rows)`` with the encoder run on
  ``micro_batch`` rows at a time (gradient caching, Gao et al. 2021, "Scaling Deep Contrastive
  Learning Batch Size under Memory Limited Setup").

  A contrastive loss couples every row of the batch, so its gradient cannot be accumulated over
  micro-batches. Instead: (1) encode the micro-batches one after another without keeping their
  activations; (2) take the loss and its gradient with respect to the cached outputs (all rows,
  the blockwise / sharded loss as usual); (3) encode each micro-batch again and pull its slice of
  that gradient back to the parameters, summing this device's contributions, then ``psum`` them
  once over ``axis_name``. Peak activation memory is one micro-batch's, for a second forward pass.
  The gradient equals the one-pass gradient where the model treats rows independently (dropout and
  stochastic depth use one key per micro-batch); BatchNorm normalises each micro-batch with its own
  statistics (synchronised over devices as usual), as in GradCache, and the running statistics take
  the mean of the micro-batches' updates.

  The micro-batches run in a ``lax.scan``, which keeps one micro-batch live at a time, or, with
  ``unroll``, in straight-line code ordered by ``optimization_barrier``. Unrolling is the default on
  CPU only: there XLA runs backward convolutions inside a loop about 30x slower than outside one
  (ResNet-18, measured on this project's 2-core CI machine), but in the unrolled code its
  scheduler keeps several micro-batches live, more as their number grows, so the memory saved is
  smaller there (docs/benchmarks.md, ``benchmarks/train_step_memory.py``).

  Args:
    model: the Flax model; ``model.apply(variables, x, train=True)`` returns a dict of outputs.
    params, batch_stats: the model's variables (replicated over ``axis_name``).
    rows: ``[n, ...]`` inputs of this device, ``n`` a multiple of ``micro_batch``.
    objective: ``objective(outputs) -> (loss, aux)`` of the ``outputs`` of all ``n`` rows.
    micro_batch: rows per encoder pass.
    outputs: the output names ``objective`` reads.
    dropout_key: folded with the micro-batch index for its 'dropout' stream.
    axis_name: the ``shard_map`` axis the batch is split over.
    unroll: see above; None: True on CPU only (``config.micro_batch_unroll`` in the trainer).

  Returns:
    ``(loss, aux, new batch_stats, grads)``.
  """
  unroll = jax.default_backend() == "cpu" if unroll is None else bool(unroll)
  n = rows.shape[0]
  count = n // micro_batch
  chunks = rows.reshape((count, micro_batch) + rows.shape[1:])
  keys = jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(count))
  names = tuple(dict.fromkeys(outputs))
  # Per-device gradients (no all-reduce per micro-batch): differentiate a varying copy of params.
  local_params = jax.tree.map(lambda p: jax.lax.pcast(p, (axis_name,), to="varying"), params)

  def encode(p, x, key):
    out, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"], rngs={"dropout": key})
    return {k: out[k] for k in names}, updates["batch_stats"]

  def backward(total, x, key, ct):
    _, pullback = jax.vjp(lambda p: encode(p, x, key)[0], local_params)
    return jax.tree.map(jnp.add, total, pullback(ct)[0])

  stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
  if unroll:
    encoded = []
    for i in range(count):
      x = chunks[i]
      if encoded:  # start micro-batch i once micro-batch i - 1 is encoded
        x, _ = jax.lax.optimization_barrier((x, encoded[-1]))
      encoded.append(encode(params, x, keys[i]))
    cached, stats = stack([e[0] for e in encoded]), stack([e[1] for e in encoded])
  else:
    _, (cached, stats) = jax.lax.scan(lambda c, xk: (c, encode(params, *xk)), None, (chunks, keys))
  (loss, aux), cotangents = jax.value_and_grad(objective, has_aux=True)(
      jax.tree.map(lambda a: a.reshape((n,) + a.shape[2:]), cached))
  cotangents = jax.tree.map(lambda a: a.reshape((count, micro_batch) + a.shape[1:]), cotangents)
  grads = jax.tree.map(jnp.zeros_like, local_params)
  if unroll:
    for i in range(count):
      # Re-encode micro-batch i after i - 1's gradient (and never merged with its first pass).
      x, key, ct, grads = jax.lax.optimization_barrier(
          (chunks[i], keys[i], jax.tree.map(lambda a: a[i], cotangents), grads))
      grads = backward(grads, x, key, ct)
  else:
    grads, _ = jax.lax.scan(lambda total, xs: (backward(total, *xs), None), grads,
                            (chunks, keys, cotangents))
  grads = jax.lax.psum(grads, axis_name)
  new_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
  return loss, aux, new_stats, grads


def make_train_step(model, config, mesh, augment_fn: Callable, schedule: Callable,
                    target_mean: float = 0.0, target_std: float = 1.0,
                    prepared: Optional[dict] = None, select_fn: Optional[Callable] = None,
                    gmm: Optional[dict] = None):
  """Builds ``train_step(state, batch) -> (state, metrics)``, jitted over ``mesh``.

  ``batch`` holds globally sharded ``x``, ``y`` (natural units, for the contrastive loss), ``y_norm``
  (regression target ``(y - target_mean) / target_std``) and, with label-distribution smoothing,
  per-example ``weight``. ``prepared``: keyword arguments of the contrastive loss computed once from
  the training labels (``objectives.prepare``, e.g. AdaCon's ECDF, applied to each batch's labels
  on device). ``select_fn``: see :func:`augment_views`. With ``loss.reg='bmse'`` (Balanced MSE,
  :mod:`contrastive_jax.train.bmse`) ``L_reg`` uses the noise scale ``state.params[bmse.SIGMA_KEY]``
  (metric ``noise_sigma``) and, for GAI, ``gmm``, the training-label GMM in the targets' units.
  ``config.micro_batch_unroll`` chooses how micro-batches run (see :func:`embedding_cache_grads`).
  A non-finite loss or gradient leaves params/optimizer state unchanged (``jnp.where``, no Python
  branch) and sets ``metrics['nonfinite']``, which the loop turns into an error naming the step.
  """
  method = config.method
  objectives.check_method(method)
  views = int(config.data.views)
  host_views = config.data.get("crop_from", "decoded") == "full"  # x: [b, views, ...] (HostCrop)
  loss_cfg = config.loss
  loss_kwargs = {**objectives.loss_kwargs(method, loss_cfg), **(prepared or {})}
  feature_key = loss_cfg.get("features", "projection")
  reg_kwargs = dict(loss_cfg.get("reg_kwargs", {}))  # e.g. focal_beta / focal_gamma for focal-R
  if loss_cfg.reg not in bmse.TRAINER_REG_LOSSES:
    raise ValueError(f"Unknown regression loss `loss.reg`={loss_cfg.reg!r}; expected one of "
                     f"{bmse.TRAINER_REG_LOSSES}.")
  bmse_opts = bmse.check_config(config) if bmse.enabled(config) else None
  if bmse_opts is not None and bmse_opts["kind"] == "gai" and gmm is None:
    raise ValueError("`loss.reg`='bmse' with `loss.bmse.kind`='gai' needs the training-label GMM "
                     "(make_train_step(..., gmm=bmse.label_gmm(config, train_labels, mean, std))).")
  reg_units = loss_cfg.get("reg_units", "normalized")
  if reg_units not in REG_UNITS:
    raise ValueError(f"Unknown `loss.reg_units`={reg_units!r}; expected one of {REG_UNITS}.")
  micro_batch = config.get("micro_batch", None)
  if micro_batch is not None and (isinstance(micro_batch, bool) or int(micro_batch) < 1):
    raise ValueError(f"`micro_batch`={micro_batch!r} must be None or a positive number of rows.")
  micro_batch = None if micro_batch is None else int(micro_batch)
  unroll = config.get("micro_batch_unroll", None)
  if unroll is not None and not isinstance(unroll, bool):
    raise ValueError(f"`micro_batch_unroll`={unroll!r} must be None, True or False.")

  def local_step(state, batch):
    step_key = jax.random.fold_in(state.rng, state.step)
    aug_key, loss_key = jax.random.split(step_key)
    # The 'dropout' stream (stochastic depth, dropout) of this step and device: models without
    # dropout ignore it, and the augmentation / loss keys are those of runs before it existed.
    dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, DROPOUT_TAG),
                                     jax.lax.axis_index(AXIS))
    if host_views:
      if batch["x"].shape[1] != views:
        raise ValueError(f"crop_from='full': the batch holds {batch['x'].shape[1]} views per "
                         f"sample, `data.views`={views}.")
      x = augment_given_views(aug_key, unit_float(batch["x"]), augment_fn)
    else:
      x = augment_views(aug_key, unit_float(batch["x"]), views, augment_fn, select_fn)
    b = x.shape[0]
    flat = x.reshape((b * views,) + x.shape[2:])
    if micro_batch is not None and (b * views) % micro_batch:
      raise ValueError(f"`micro_batch`={micro_batch} must divide the {b * views} rows (local batch "
                       f"{b} x {views} views) each device encodes per step.")
    targets = jnp.repeat(batch["y_norm"] if reg_units == "normalized" else batch["y"], views)

    weights = jnp.repeat(batch["weight"], views) if "weight" in batch else None

    def objective(out, sigma=None):
      """``gamma_reg L_reg + gamma_con L_con`` (AdaCon Eq. 8) of the model outputs of all views
      (``sigma``: Balanced MSE's noise scale)."""
      pred = out["prediction"]
      if reg_units == "label":  # L_reg of mean + std * output against y, in label units
        pred = pred * target_std + target_mean
      if bmse_opts is not None:
        loss_reg = bmse.global_loss(pred, targets, sigma, bmse_opts["kind"], gmm, weights, AXIS)
      else:
        loss_reg = jax.lax.pmean(
            regression_loss(pred, targets, loss_cfg.reg, loss_cfg.get("huber_delta", 1.0),
                            weights, **reg_kwargs), AXIS)
      features = out[feature_key].reshape(b, views, -1)
      preds = jax.lax.stop_gradient(out["prediction"]).reshape(b, views)
      inputs = {"labels": batch["y"], "key": loss_key, "preds": preds * target_std + target_mean}
      loss_con = objectives.contrastive_term(method, features, inputs, loss_kwargs, AXIS)
      total = loss_cfg.gamma_reg * loss_reg + loss_cfg.gamma_con * loss_con
      return total, (loss_reg, loss_con)

    if micro_batch is None:
      def loss_fn(params):
        out, updates = model.apply({"params": bmse.model_params(params),
                                    "batch_stats": state.batch_stats}, flat,
                                   train=True, mutable=["batch_stats"],
                                   rngs={"dropout": dropout_key})
        sigma = None if bmse_opts is None else bmse.noise_sigma(params, bmse_opts)
        total, (loss_reg, loss_con) = objective(out, sigma)
        return total, (loss_reg, loss_con, updates["batch_stats"])

      (loss, (loss_reg, loss_con, batch_stats)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(state.params)
    else:
      loss, (loss_reg, loss_con), batch_stats, grads = embedding_cache_grads(
          model, state.params, state.batch_stats, flat, objective, micro_batch,
          (feature_key, "prediction"), dropout_key, unroll=unroll)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    new_state = apply_if_finite(state, grads, batch_stats, finite)
    metrics = {
        "loss": loss, "loss_reg": loss_reg, "loss_con": loss_con,
        "grad_norm": optax.global_norm(grads), "lr": schedule(state.step),
        "nonfinite": jnp.logical_not(finite).astype(jnp.int32),
    }
    if bmse_opts is not None:
      metrics["noise_sigma"] = state.params[bmse.SIGMA_KEY]  # the value this step's loss used
    return new_state, metrics

  sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=0)


def make_predict_step(model, mesh, output: str = "prediction",
                      preprocess: Optional[Callable[[jax.Array], jax.Array]] = None):
  """Builds ``predict(state, x) -> model output`` (eval mode), sharded over the batch axis.

  ``output``: 'prediction' (normalised units), 'embedding' or 'projection'. ``preprocess``: an
  optional deterministic ``x -> x'`` applied on device first (e.g. the evaluation clip of a video).
  """

  def local_predict(state, x):
    if preprocess is not None:
      x = preprocess(x)
    out = model.apply({"params": bmse.model_params(state.params), "batch_stats": state.batch_stats},
                      x, train=False)
    return out[output]

  return jax.jit(jax.shard_map(local_predict, mesh=mesh, in_specs=(P(), P(AXIS)),
                               out_specs=P(AXIS)))
