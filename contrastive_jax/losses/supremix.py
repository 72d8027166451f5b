"""SupReMix: supervised contrastive regression with embedding-level mixup (arXiv 2309.16633).

SupCon over the real pairs plus two kinds of mixtures of (stop-gradient) embeddings per anchor ``i``
(every one of the ``M = batch * views`` rows is an anchor, ``f`` unit rows, ``s_ab = <f_a, f_b>``):

  * hard negatives, anchor-inclusive (paper Sec. 3.1 "Mix-neg"): for every ``k`` with ``y_k != y_i``,
        m_ik = a_ik f_i + (1 - a_ik) f_k,   a_ik ~ Beta(2, 8),   label a_ik y_i + (1 - a_ik) y_k;
  * hard positives, anchor-exclusive ("Mix-pos"): for every ``(j, k)`` with ``y_j < y_i < y_k``,
    ``y_i - y_j < n`` and ``y_k - y_i < n`` (window ``n``),
        m_ijk = b f_j + (1 - b) f_k,   b = (y_k - y_i) / (y_k - y_j),   label y_i;
  * distance magnifying (Sec. 3.2, Theorem 1): every denominator term is weighted by
    ``w = |y_i - y_label| + 1`` (``y_label``: the column's label, the mixture's label for mixtures).

With ``l = s / tau`` for every term ``t`` (real column, hard negative or hard positive),
``P(i)`` = real positives (same label, not ``i``) + hard positives, and ``D(i)`` = every real column
but ``i`` + every hard negative + every hard positive:

    L_i = -(1/|P(i)|) sum_{p in P(i)} [ l_ip - log sum_{t in D(i)} w_it exp(l_it) ],    L = mean_i L_i

(``L_i = 0`` when ``P(i)`` is empty; it still counts in the mean).

Decisions, each read off the official code (Dingyijiang1/Mixup-Your-Own-Pairs, ``agedb-dir/``;
``imdb-wiki/`` is identical but for defaults):
  * numerator = ``myop_mask == 1`` and real positives (``supremix_loss.py`` L146, L169); denominator =
    every column with ``logits_mask`` (real ``a != i`` and every mixture with mask ``!= -1``, L147),
    each multiplied by ``neg_weight`` (L152-156), which is ``|y_i - y_label| + 1`` for
    ``--distance L1_inv`` (L40-41, L50-51; ``train_supremix.py`` L30-31: ``--use_weight`` is
    ``type=bool, default=True``, so always on). Real positives and hard positives get weight 1; the
    numerator itself is never weighted (L156: ``logits - log(sum(...))``).
  * hard-negative condition ``j == i, k != i, y_j != y_k`` and its label ``a y_i + (1 - a) y_k``
    (``train_supremix.py`` L194-197, L214-215); hard-positive condition with strict ``<`` on both sides
    and on the window (L200), ``b = clamp((y_k - y_i) / clamp(y_k - y_j, 1e-9), 0, 1)`` (``utils.py``
    L180-183), label ``y_i`` (L235).
  * ``a ~ Beta(2, 8)``: ``--beta`` defaults to 0, and ``b == 0`` builds ``Beta(2, 8)`` (L207), although
    the help text (L38) calls 0 "beta(5, 5)"; METHODS.md records the same reading. One draw per
    (anchor row, column) pair: both views of a sample draw independently, as in the official
    ``beta.sample((indices.shape[1],))`` over every ``(i, i, k)`` triple.
  * mixtures are NOT re-normalised: they are convex combinations of the unit embeddings
    (``resnet.py`` L147 normalises the embeddings; the mixtures are only summed, L214/L234) and the
    similarity is the plain dot product ``bmm(mixtures, anchor)`` (``supremix_loss.py`` L135).
  * stop-gradient: the mixtures are ``.detach()``-ed (``train_supremix.py`` L243) but the anchor is not,
    so a mixture term is ``<f_i, sg(m)>``: it sends gradient to the anchor only.
  * the loss is ``-(tau / tau_base) * mean`` with ``tau_base = tau`` (``train_supremix.py`` L294), i.e.
    scale 1, averaged over all ``batch * views`` anchors (``supremix_loss.py`` L180-181).

Never materialising a mixture: ``<f_i, a f_j + (1 - a) f_k> = a s_ij + (1 - a) s_ik``, so every mixture
logit is a linear combination of two entries of the similarity matrix (``s_ii = <f_i, sg(f_i)>`` for the
anchor-inclusive ones). The hard negatives are one ``[n, N]`` matrix (``n`` anchors of this shard,
``N`` global rows). The hard positives are an ``[N, N]`` grid of ``(j, k)`` pairs per anchor (``b``
couples ``j`` and ``k``, so the sum does not factor): each grid is built, reduced (log-sum-exp, sum,
max) and dropped, a chunk of anchors at a time (``lax.map``), in the forward pass and again in a
custom VJP, whose residuals are the ``[n, N]`` similarities. Memory O(M^2) (``chunk * N^2 <= 2^21``
elements of temporaries), time O(M^3) (``O(n N^2)`` per shard). At M = 512, dim 128, CPU:
``value_and_grad`` needs 45 MiB of XLA temporaries (``memory_analysis``) and ~160 MiB of peak-RSS
growth; the official code builds an ``[M, M^2, dim]`` tensor (8.6 GB at batch 128, 64 GiB at 256).

``official=True`` reproduces the official shifts: the real logits are shifted by their row max
``c1_i = max_a l_ia`` (self included, L113-114) and the mixture logits by THEIR row max ``c2_i``
(L142-143), both stop-gradient, inside one log-sum-exp (L145-156). As the two shifts differ, the mixtures
are effectively weighted ``exp(c1_i - c2_i)`` relative to the real columns, in the denominator and in the
hard-positive numerators. ``c2_i`` is the max over the ``[M, C]`` compressed mixture matrix
(``utils.py::compress_mixtures``), whose row ``i`` is padded with ``-1``-filled vectors (L255) wherever
row ``i`` has fewer valid mixtures than the fullest row; a padded slot's logit ``-sum_d f_id / tau``
enters the max (it is masked out of the sums). We reproduce that too (a global max of the per-row
mixture counts, ``pmax`` over the mesh). Not reproduced:
  * ``compress_mixtures`` sorts the mixture LABELS by value (L265) independently of the mask sort that
    orders the mixtures (L234), so the official distance weights are paired with the wrong mixtures, in
    an order that depends on ``torch.sort``'s unspecified order among equal mask values: we pair each
    mixture with its own label (the paper's definition);
  * an anchor without any positive gives 0/0 = NaN there (L169); 0 here (the library contract).
Our denominators are log-sum-exps, equal to the official ``log(sum(exp(...)))`` wherever that is finite.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from contrastive_jax import pairwise
from contrastive_jax.losses import _checks

CHUNK_ELEMENTS = 1 << 21  # anchors per lax.map step: chunk * N^2 <= 2M elements (8 MB in float32)
_MAX_EXPONENTIALS = 64  # integer Beta(a, b) with a + b <= this: sums of exponentials


def _check_beta(beta) -> Tuple[float, float]:
  try:
    a, b = (float(v) for v in beta)
  except (TypeError, ValueError):
    raise ValueError(f"`beta` must be a pair (a, b) of finite numbers > 0; got {beta!r}.") from None
  if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
    raise ValueError(f"`beta` must be a pair (a, b) of finite numbers > 0; got {beta!r}.")
  return a, b


def _chunk_elements(value) -> int:
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"`chunk_elements` must be a positive integer; got {value!r}.")
  return int(value)


def _check_key(key):
  if key is None:
    raise ValueError("`key` (a PRNG key) is required unless `alphas` is given.")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  if not ((typed and key.shape == ()) or (not typed and key.shape == (2,)
                                          and key.dtype == jnp.uint32)):
    raise ValueError(f"`key` must be one PRNG key (jax.random.key(...) or a uint32[2] "
                     f"jax.random.PRNGKey(...)); got dtype {key.dtype}, shape {key.shape}.")
  return key


def _beta_draw(key, beta: Tuple[float, float], num: int, dtype):
  """``num`` Beta(a, b) draws. Integer a, b (the Beta(2, 8) default): ``E_a / (E_a + E_b)`` with
  ``E_c`` a sum of ``c`` Exp(1) draws, i.e. a Gamma(c, 1) variable (exact, and compiles in a fraction
  of the time of ``jax.random.beta``'s rejection sampler); other parameters: ``jax.random.beta``."""
  a, b = beta
  if a.is_integer() and b.is_integer() and a + b <= _MAX_EXPONENTIALS:
    a, b = int(a), int(b)
    # drawn flat: a 1-D draw compiles several times faster than a [num, a + b] one on XLA:CPU
    e = jax.random.exponential(key, (num * (a + b),), dtype).reshape(num, a + b)
    ea, eb = jnp.sum(e[:, :a], axis=1), jnp.sum(e[:, a:], axis=1)
    return ea / jnp.maximum(ea + eb, jnp.finfo(dtype).tiny)
  return jax.random.beta(key, a, b, (num,), dtype)


def _alpha_rows(key, rows: jax.Array, num_columns: int, beta: Tuple[float, float], dtype):
  """Rows ``rows`` of the ``[M, M]`` hard-negative coefficient matrix; row ``r`` is drawn from
  ``fold_in(key, r)``.

  Indexed by the GLOBAL row, so every shard (all holding the same replicated key) draws exactly the
  rows the dense computation draws.
  """
  return jax.vmap(lambda r: _beta_draw(jax.random.fold_in(key, r), beta, num_columns, dtype))(rows)


def supremix_alphas(key, num_rows: int, beta: Sequence[float] = (2.0, 8.0),
                    dtype=jnp.float32) -> jax.Array:
  """The ``[M, M]`` hard-negative mixing coefficients that ``supremix(..., key)`` draws.

  Row = anchor, column = ``k``, both GLOBAL row indices (``sample * views + view``); entries whose
  labels are equal are drawn but unused.
  """
  key = _check_key(key)
  beta = _check_beta(beta)
  return _alpha_rows(key, jnp.arange(num_rows, dtype=jnp.int32), num_rows, beta, dtype)


def _check_alphas(alphas, num_rows: int, dtype):
  if not hasattr(alphas, "shape"):
    alphas = np.asarray(alphas)
  if tuple(alphas.shape) != (num_rows, num_rows):
    raise ValueError(f"`alphas` must have shape [M, M] with M = global batch * views = {num_rows} "
                     f"(row = anchor, column = k, global row indices); got {tuple(alphas.shape)}.")
  host = _checks.concrete(alphas)
  if host is not None:
    if not np.issubdtype(host.dtype, np.floating) and not np.issubdtype(host.dtype, np.integer):
      raise ValueError(f"`alphas` must be numeric; got dtype {host.dtype}.")
    if not np.all(np.isfinite(host)) or host.min() < 0 or host.max() > 1:
      raise ValueError("`alphas` must be finite and in [0, 1].")
  return jnp.asarray(alphas).astype(dtype)


def _masked_reduce(logits: jax.Array, valid: jax.Array, axis):
  """(log-sum-exp, max) of ``logits`` over ``valid`` entries along ``axis``; (0, -inf) where none.

  Rows without a valid entry get a finite value and zero (not NaN) gradients.
  """
  has = jnp.any(valid, axis=axis)
  masked = jnp.where(valid, logits, -jnp.inf)
  row_max = jnp.max(masked, axis=axis)
  shift = jax.lax.stop_gradient(jnp.where(has, row_max, 0.0))
  total = jnp.sum(jnp.exp(masked - jnp.expand_dims(shift, axis)), axis=axis)
  lse = jnp.where(has, jnp.log(jnp.where(has, total, 1.0)) + shift, 0.0)
  return lse, row_max


def _window_masks(y_i, column_y, window):
  """Hard-positive partners of an anchor labelled ``y_i`` (official strict ``<``, L200):
  ``j`` with ``y_j < y_i``, ``y_i - y_j < n`` and ``k`` with ``y_k > y_i``, ``y_k - y_i < n``."""
  lower = (column_y < y_i) & (y_i - column_y < window)
  upper = (column_y > y_i) & (column_y - y_i < window)
  return lower, upper


def _pair_logits(logits_i, y_i, column_y, inv_gap, window):
  """Anchor ``i``'s hard positives as an ``[N, N]`` (j, k) grid: (logits, b, valid)."""
  lower, upper = _window_masks(y_i, column_y, window)
  b = jnp.clip((column_y[None, :] - y_i) * inv_gap, 0.0, 1.0)  # official clamp, utils.py L180-183
  mix = logits_i[None, :] + b * (logits_i[:, None] - logits_i[None, :])  # b l_ij + (1 - b) l_ik
  return mix, b, lower[:, None] & upper[None, :]


def _inv_gap(column_y):
  """``1 / (y_k - y_j)`` ``[j, k]``, shared by every anchor (clamped off the valid set, y_k <= y_j)."""
  return 1.0 / jnp.maximum(column_y[None, :] - column_y[:, None], 1e-9)


def _chunked(fn, xs, n: int, num_cols: int, chunk_elements: int):
  """``vmap(fn)`` over anchors, ``chunk`` anchors at a time (``chunk * N^2 <= chunk_elements``
  temporaries, at least one anchor)."""
  chunk = int(max(1, min(n, chunk_elements // max(num_cols * num_cols, 1))))
  if chunk >= n:
    return jax.vmap(fn)(*xs)
  return jax.lax.map(lambda args: fn(*args), xs, batch_size=chunk)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _hard_positive_stats(chunk_elements, frozen_logits, anchor_y, column_y, window):
  """Per anchor, over its hard positives ``(j, k)``: (log-sum-exp, sum, max) of their logits.

  ``frozen_logits [n, N]`` = ``<f_i, sg(f_c)> / tau``; the logit of mixture ``(j, k)`` is
  ``b l_ij + (1 - b) l_ik``. The ``[N, N]`` grid of one anchor is built, reduced and dropped, a chunk of
  anchors at a time, in the forward pass and again in the backward pass (custom VJP: the residuals are
  the ``[n, N]`` inputs and the ``[n]`` log-sum-exps, never the grids). The max is for the
  stop-gradient official shift: its cotangent is ignored.
  """
  return _hard_positive_forward(chunk_elements, frozen_logits, anchor_y, column_y, window)


def _hard_positive_forward(chunk_elements, frozen_logits, anchor_y, column_y, window):
  inv_gap = _inv_gap(column_y)

  def per_anchor(logits_i, y_i):
    mix, _, valid = _pair_logits(logits_i, y_i, column_y, inv_gap, window)
    lse, row_max = _masked_reduce(mix.reshape(-1), valid.reshape(-1), 0)
    return lse, jnp.sum(jnp.where(valid, mix, 0.0)), row_max

  return _chunked(per_anchor, (frozen_logits, anchor_y), *frozen_logits.shape, chunk_elements)


def _hard_positive_fwd(chunk_elements, frozen_logits, anchor_y, column_y, window):
  out = _hard_positive_forward(chunk_elements, frozen_logits, anchor_y, column_y, window)
  return out, (frozen_logits, anchor_y, column_y, window, out[0])


def _hard_positive_bwd(chunk_elements, residuals, cotangents):
  frozen_logits, anchor_y, column_y, window, lse = residuals
  g_lse, g_sum, _ = cotangents
  inv_gap = _inv_gap(column_y)

  def per_anchor(logits_i, y_i, lse_i, g_lse_i, g_sum_i):
    # d lse / d mix_jk = softmax_jk, d sum / d mix_jk = 1; d mix_jk = b d l_ij + (1 - b) d l_ik
    mix, b, valid = _pair_logits(logits_i, y_i, column_y, inv_gap, window)
    prob = jnp.exp(jnp.where(valid, mix, -jnp.inf) - lse_i)
    g_mix = jnp.where(valid, g_lse_i * prob + g_sum_i, 0.0)
    return jnp.sum(g_mix * b, axis=1) + jnp.sum(g_mix * (1.0 - b), axis=0)

  grad = _chunked(per_anchor, (frozen_logits, anchor_y, lse, g_lse, g_sum), *frozen_logits.shape,
                  chunk_elements)
  return grad, jnp.zeros_like(anchor_y), jnp.zeros_like(column_y), jnp.zeros_like(window)


_hard_positive_stats.defvjp(_hard_positive_fwd, _hard_positive_bwd)


def supremix(features: jax.Array, labels: jax.Array, key, temperature: float = 0.5, *,
             window: float = 5.0, beta: Sequence[float] = (2.0, 8.0),
             alphas: Optional[jax.Array] = None, official: bool = False,
             axis_name: Optional[str] = None, chunk_elements: int = CHUNK_ELEMENTS) -> jax.Array:
  """SupReMix loss (module docstring): SupCon + Mix-neg + Mix-pos + distance magnifying.

  Args:
    features: ``[batch, views, dim]`` embeddings (L2-normalised here; a no-op on unit vectors, which is
      what the official model outputs).
    labels: ``[batch]`` regression labels.
    key: PRNG key for the hard-negative coefficients ``a ~ Beta(beta)`` (replicated, i.e. the same key
      on every shard; row ``r`` is drawn from ``fold_in(key, r)``); ignored (may be None) when
      ``alphas`` is given.
    temperature: ``tau`` (0.5: official AgeDB default; 0.3 on IMDB-WIKI).
    window: ``n``, the hard-positive label window (official ``--n 5``, strict ``<``).
    beta: Beta parameters of the hard-negative coefficient (official default: Beta(2, 8)).
    alphas: optional ``[M, M]`` hard-negative coefficients (row = anchor, column = ``k``, global row
      indices ``sample * views + view``) replacing the draw from ``key``; see ``supremix_alphas``.
    official: reproduce the official double shift (module docstring).
    axis_name: mesh axis when called per shard inside ``shard_map`` (``None``: dense).
    chunk_elements: memory bound of the hard positives: anchors are mapped in chunks of
      ``chunk_elements // N^2`` (at least one), ``N`` the columns; the value does not change.

  Returns:
    The float32 scalar loss, the mean over all anchors of the global batch.
  """
  features = _checks.check_features(features, axis_name)
  labels = _checks.check_per_sample(labels, features.shape[0], "labels")
  _checks.check_positive(temperature, "temperature")
  _checks.check_positive(window, "window")
  beta = _check_beta(beta)
  batch, views, _ = features.shape
  num_rows = batch * views * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  if alphas is None:
    key = _check_key(key)
  else:
    alphas = _check_alphas(alphas, num_rows, features.dtype)

  rows = pairwise.make_rows(pairwise.l2_normalize(features), axis_name)
  dtype = rows.anchors.dtype
  n, num_cols = rows.is_self.shape
  anchor_y, column_y = rows.per_sample(labels.astype(dtype), axis_name)
  anchor_index = rows.anchor_sample * rows.num_views + (
      jnp.arange(n, dtype=jnp.int32) % rows.num_views)
  if alphas is None:
    alpha = _alpha_rows(key, anchor_index, num_cols, beta, dtype)
  else:
    alpha = jnp.take(alphas, anchor_index, axis=0)
  alpha = jax.lax.stop_gradient(alpha)

  # Real pairs: gradient through both sides. Mixtures: <f_i, sg(mixture)>, gradient to the anchor only.
  logits = (rows.anchors @ rows.columns.T) / temperature
  frozen = jax.lax.stop_gradient(rows.columns)
  frozen_logits = (rows.anchors @ frozen.T) / temperature
  frozen_self = jnp.sum(rows.anchors * jax.lax.stop_gradient(rows.anchors), axis=1) / temperature

  label_diff = anchor_y[:, None] - column_y[None, :]
  not_self = ~rows.is_self
  same = anchor_y[:, None] == column_y[None, :]
  real_positive = same & not_self
  # SupCon part with distance magnifying: log w = log(|y_i - y_a| + 1) (1 for the positives).
  lse_real, _ = _masked_reduce(logits + jnp.log1p(jnp.abs(label_diff)), not_self, 1)

  # Mix-neg: l = a l_ii + (1 - a) l_ik, label a y_i + (1 - a) y_k.
  neg_label = alpha * anchor_y[:, None] + (1.0 - alpha) * column_y[None, :]
  neg_logits = alpha * frozen_self[:, None] + (1.0 - alpha) * frozen_logits
  neg_valid = ~same
  lse_neg, _ = _masked_reduce(neg_logits + jnp.log1p(jnp.abs(anchor_y[:, None] - neg_label)),
                              neg_valid, 1)
  neg_max = jnp.max(jnp.where(neg_valid, neg_logits, -jnp.inf), axis=1)
  has_neg = jnp.any(neg_valid, axis=1)

  # Mix-pos (weight |y_i - y_i| + 1 = 1).
  window = jnp.asarray(window, dtype)
  lse_pos, sum_pos, pos_max = _hard_positive_stats(_chunk_elements(chunk_elements), frozen_logits,
                                                   anchor_y, column_y, window)
  pos_max = jax.lax.stop_gradient(pos_max)
  lower, upper = _window_masks(anchor_y[:, None], column_y[None, :], window)
  n_pos_mix = jnp.sum(lower, axis=1) * jnp.sum(upper, axis=1)  # |{(j, k)}| = |{j}| |{k}|
  has_pos = n_pos_mix > 0

  offset = jnp.zeros((n,), dtype)  # added to every mixture logit
  if official:
    # log_prob = (l - c1) for real columns, (l - c2) for mixtures, minus
    # log(sum_real w e^{l - c1} + sum_mix w e^{l - c2}): the clean log-softmax with every mixture
    # logit raised by the stop-gradient offset c1 - c2.
    c1 = jnp.max(logits, axis=1)  # official row max includes the anchor itself
    n_mix = jnp.sum(neg_valid, axis=1) + n_pos_mix
    most = jnp.max(n_mix)
    if axis_name is not None:
      most = jax.lax.pmax(most, axis_name)
    pad_logit = -jnp.sum(rows.anchors, axis=1) / temperature  # <f_i, (-1, ..., -1)> / tau
    c2 = jnp.maximum(jnp.maximum(neg_max, pos_max), jnp.where(n_mix < most, pad_logit, -jnp.inf))
    offset = jax.lax.stop_gradient(jnp.where(jnp.isfinite(c2), c1 - c2, 0.0))

  parts = jnp.stack([lse_real, lse_neg + offset, lse_pos + offset], axis=1)
  valid_parts = jnp.stack([jnp.ones_like(has_neg), has_neg, has_pos], axis=1)
  log_denominator = pairwise.masked_logsumexp(jnp.where(valid_parts, parts, 0.0), valid_parts)

  count = jnp.sum(real_positive, axis=1) + n_pos_mix
  numerator = (jnp.sum(jnp.where(real_positive, logits, 0.0), axis=1)
               + jnp.where(has_pos, sum_pos + n_pos_mix.astype(dtype) * offset, 0.0))
  per_anchor = (numerator - count.astype(dtype) * log_denominator) / jnp.maximum(count, 1).astype(
      dtype)
  return _checks.nan_unless_valid(-pairwise.global_mean(per_anchor, axis_name), axis_name,
                                  finite=(features, labels), positive=(temperature, window),
                                  unit_interval=(alphas,))
