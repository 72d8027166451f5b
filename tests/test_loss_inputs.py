"""Loss inputs (issue 16, items 13-16): no silent wrong answers from the contrastive losses.

13: non-finite features / labels raise (concrete) or give a NaN loss (traced, under ``jit``).
14: the cosine losses are scale-safe (``l2_normalize`` no longer overflows above ~2.7e19).
15: under ``jit``, static hyperparameters are still checked at trace time; traced ones, and traced
    per-sample inputs out of range (AdaCon ``cdf``), give NaN; the same inside ``shard_map``.
16: non-numeric labels raise naming ``labels``; every SimCLR-style loss refuses one view, the
    supervised SupCon-family losses accept it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import contrastive_jax as cj
from contrastive_jax.pairwise import l2_normalize

L = cj.losses
pytestmark = pytest.mark.usefixtures('fast_compile')

_RNG = np.random.default_rng(16)
F = _RNG.normal(size=(6, 2, 4)).astype(np.float32)
Y = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0], np.float32)
CDF = np.linspace(0.1, 0.9, 6).astype(np.float32)
PREDS = (Y[:, None] + _RNG.normal(size=(6, 2))).astype(np.float32)
KEY = jax.random.key(0)

# name -> loss(features, labels, **hyperparameters); every hyperparameter may be given by keyword.
LOSSES = {
    'simclr': lambda f, y, **k: L.simclr(f, **k),
    'supcon': lambda f, y, **k: L.supcon(f, y, **k),
    'adacon': lambda f, y, cdf=CDF, **k: L.adacon(f, y, cdf, **k),
    'accon': lambda f, y, label_range=4.0, **k: L.accon(f, y, label_range, **k),
    'rnc': lambda f, y, **k: L.rnc(f, y, **k),
    'supremix': lambda f, y, **k: L.supremix(f, y, KEY, **k),
    'conr': lambda f, y, preds=PREDS, **k: L.conr(f, y, preds, **k),
    'ranksim': lambda f, y, **k: L.ranksim(f, y, KEY, **k),
    'npair': lambda f, y, **k: L.npair(f, y, **k),
    'adaptive_triplet': lambda f, y, **k: L.adaptive_triplet(f, y, **k),
    'binary_contrastive': lambda f, y, **k: L.binary_contrastive(f, **k),
    'binary_contrastive_combo': lambda f, y, **k: L.binary_contrastive_combo(f, **k),
    'mio': lambda f, y, **k: L.mio(f, **k),
    'dystress': lambda f, y, tau_min=0.1, **k: L.dystress(f, tau_min, 0.2, **k),
    'dcl': lambda f, y, **k: L.dcl(f, **k),
}
WITH_LABELS = ['supcon', 'adacon', 'accon', 'rnc', 'supremix', 'conr', 'ranksim', 'npair',
               'adaptive_triplet']
COSINE = [n for n in LOSSES if n != 'rnc']  # rnc: Euclidean distances of the raw features
SELF_SUPERVISED = ['simclr', 'binary_contrastive', 'binary_contrastive_combo', 'mio', 'dystress',
                   'dcl']


def test_every_registered_loss_is_covered():
  assert set(LOSSES) == set(L.CONTRASTIVE_LOSSES)


# loss -> (a hyperparameter passed traced, a valid value, invalid values); ranksim's lambda_ must be
# a Python number (static in its custom backward pass).
TRACED = {
    'simclr': ('temperature', 0.5, (-1.0, 0.0, np.nan)),
    'supcon': ('temperature', 0.1, (-1.0, np.inf)),
    'adacon': ('temperature', 0.1, (-1.0,)),
    'accon': ('label_range', 4.0, (-4.0,)),
    'rnc': ('temperature', 2.0, (-1.0,)),
    'supremix': ('window', 2.0, (-1.0,)),
    'conr': ('window', 1.0, (-1.0,)),
    'ranksim': (None, None, ()),
    'npair': ('l2_reg', 0.1, (-0.1,)),
    'adaptive_triplet': ('margin_scale', 1.0, (-1.0,)),
    'binary_contrastive': ('nu', 2.0, (0.0,)),
    'binary_contrastive_combo': ('contr_weight', 0.5, (-0.5,)),
    'mio': ('temperature', 0.2, (-0.2,)),
    'dystress': ('tau_min', 0.1, (-0.1, 0.3)),  # 0.3 > tau_max = 0.2
    'dcl': ('temperature', 0.1, (-0.1, 0.0)),
}


@functools.lru_cache(maxsize=None)
def _compiled(name):
  """``(f, y, v) -> (loss, d loss / d f)`` under jit, with features, labels and the hyperparameter
  ``TRACED[name]`` (value ``v``) all traced: one compiled program per loss, shared by the tests."""
  arg = TRACED[name][0]
  return jax.jit(jax.value_and_grad(
      lambda f, y, v: LOSSES[name](f, y, **({} if arg is None else {arg: v}))))


def _value_and_grad(name, f=F, y=Y, v=None):
  return _compiled(name)(f, y, TRACED[name][1] if v is None else v)


def _with(x, index, value):
  x = x.copy()
  x[index] = value
  return x


# ------------------------------------------------------------------------------------------------
# 13. Non-finite inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nonfinite_features_raise(name, bad):
  with pytest.raises(ValueError, match='`features` has 1 non-finite'):
    LOSSES[name](_with(F, (3, 1, 2), bad), Y)


@pytest.mark.parametrize('name', WITH_LABELS)
def test_nonfinite_labels_raise(name):
  with pytest.raises(ValueError, match='`labels` has 1 non-finite'):
    LOSSES[name](F, _with(Y, 2, np.nan))


@pytest.mark.parametrize('name', list(LOSSES))
def test_nonfinite_inputs_under_jit_give_nan(name):
  """Under jit: a finite loss and gradient for valid inputs, NaN for a NaN / inf feature (rnc and
  ranksim gave finite, wrong values: their sorts swallowed the NaN) or a NaN label."""
  value, grad = _value_and_grad(name)
  assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.any(grad != 0)
  for bad in (np.nan, np.inf):
    value, grad = _value_and_grad(name, _with(F, (3, 1, 2), bad))
    assert np.isnan(value), (name, bad, value)
    assert np.any(np.isnan(grad)), name
  if name in WITH_LABELS:
    assert np.isnan(_value_and_grad(name, y=_with(Y, 2, np.nan))[0])


# ------------------------------------------------------------------------------------------------
# 14. Scale-safe normalisation
# ------------------------------------------------------------------------------------------------
def _old_l2_normalize(x, eps=1e-12):
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def test_l2_normalize_scale_safe_and_unchanged_for_ordinary_rows():
  x = F.reshape(-1, 4)
  norm = jax.jit(l2_normalize)
  grad = jax.jit(jax.grad(lambda v, w: jnp.sum(l2_normalize(v) * w)))
  old_grad = jax.jit(jax.grad(lambda v, w: jnp.sum(_old_l2_normalize(v) * w)))
  unit = np.asarray(norm(x))
  for scale in (1e19, 1e30, 1e37):  # the old formula: zero rows, zero gradients
    big = x * np.float32(scale)
    np.testing.assert_allclose(norm(big), unit, rtol=1e-6, atol=1e-7)
    if scale < 1e35:  # (at 1e37 the true gradient, ~1e-38, is below float32's normal range)
      g = np.asarray(grad(big, x[::-1]), np.float64) * scale
      np.testing.assert_allclose(g, grad(x, x[::-1]), rtol=1e-4, atol=1e-6)
  extreme = np.array([[3e38, -3e38, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
  np.testing.assert_allclose(norm(extreme), [[0.5**0.5, -0.5**0.5, 0, 0], [0, 0, 0, 0]], rtol=1e-6)
  assert np.all(np.isfinite(grad(extreme, np.ones_like(extreme))))  # finite at a zero row
  for scale in (1e-3, 1.0, 1e3, 1e9):  # below 2^32: the old formula, bitwise (values and gradients)
    v = x * np.float32(scale)
    np.testing.assert_array_equal(norm(v), jax.jit(_old_l2_normalize)(v))
    np.testing.assert_array_equal(grad(v, x[::-1]), old_grad(v, x[::-1]))


@pytest.mark.parametrize('name', COSINE)
def test_cosine_losses_scale_safe(name):
  """``loss(F * 1e19) == loss(F)`` with the same direction of gradient (was: log(M - 1), gradient 0)."""
  if name == 'npair':  # without its l2_reg, which penalises the raw norm (traced: 0 * inf = NaN)
    fn = jax.jit(jax.value_and_grad(L.npair))
  else:
    fn = lambda f, y: _value_and_grad(name, f, y)
  value, grad = fn(F, Y)
  for scale in (1e19, 1e30):
    big_value, big_grad = fn(F * np.float32(scale), Y)
    np.testing.assert_allclose(big_value, value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(big_grad, np.float64) * scale, grad, rtol=1e-3,
                               atol=1e-4 * float(np.max(np.abs(grad))))


# ------------------------------------------------------------------------------------------------
# 15. Under jit: static hyperparameters checked at trace time; traced ones give NaN
# ------------------------------------------------------------------------------------------------
# (loss, hyperparameter, invalid value); a valid value of each is the loss' default unless below
STATIC_BAD = [
    ('simclr', 'temperature', -1.0), ('simclr', 'base_temperature', 0.0),
    ('supcon', 'temperature', -1.0), ('supcon', 'base_temperature', np.nan),
    ('adacon', 'temperature', -1.0), ('accon', 'label_range', 0.0), ('accon', 'temperature', -1.0),
    ('accon', 'bin_width', -1.0), ('rnc', 'temperature', -1.0), ('supremix', 'temperature', -1.0),
    ('supremix', 'window', 0.0), ('conr', 'window', -1.0), ('conr', 'temperature', 0.0),
    ('conr', 'e', np.inf), ('ranksim', 'lambda_', -1.0), ('npair', 'l2_reg', -1.0),
    ('adaptive_triplet', 'margin_scale', -1.0), ('binary_contrastive', 'temperature', -1.0),
    ('binary_contrastive', 'nu', 0.0), ('binary_contrastive_combo', 'contr_temperature', -1.0),
    ('binary_contrastive_combo', 'contr_weight', -1.0), ('mio', 'temperature', -1.0),
    ('dystress', 'tau_min', -1.0), ('dystress', 'tau_min', 0.3),  # tau_min > tau_max = 0.2
]


@pytest.mark.parametrize('name,arg,bad', STATIC_BAD)
def test_static_hyperparameters_checked_under_jit(name, arg, bad):
  with pytest.raises(ValueError, match=f'`{arg}`'):
    jax.jit(lambda f, y: LOSSES[name](f, y, **{arg: bad}))(F, Y)


@pytest.mark.parametrize('name', [n for n in LOSSES if TRACED[n][0]])
def test_traced_hyperparameters_out_of_range_give_nan(name):
  """Traced hyperparameters are checked at run time: temperature -1 gave a finite loss under jit."""
  for bad in TRACED[name][2]:
    assert np.isnan(_value_and_grad(name, v=bad)[0]), (name, TRACED[name][0], bad)


def test_traced_per_sample_inputs_out_of_range_give_nan():
  """The issue's cases: NaN labels gave supcon 2.329, AdaCon with cdf = 2 gave 75.0."""
  assert np.isnan(_value_and_grad('supcon', y=_with(Y, 0, np.nan))[0])
  adacon = jax.jit(L.adacon)
  assert np.isfinite(adacon(F, Y, CDF))
  for bad in (2.0, -0.1, np.nan):
    assert np.isnan(adacon(F, Y, np.full_like(CDF, bad)))
  conr = jax.jit(lambda f, y, p, w: L.conr(f, y, p, weights=w))
  ones = np.ones_like(Y)
  assert np.isfinite(conr(F, Y, PREDS, ones))
  assert np.isnan(conr(F, Y, _with(PREDS, (0, 0), np.nan), ones))
  assert np.isnan(conr(F, Y, PREDS, _with(ones, 1, -1.0)))
  supremix = jax.jit(lambda f, y, a: L.supremix(f, y, None, alphas=a))
  alphas = np.full((12, 12), 0.3, np.float32)
  assert np.isfinite(supremix(F, Y, alphas)) and np.isnan(supremix(F, Y, alphas + 1.0))


def test_nan_under_shard_map_covers_the_global_batch():
  """Inside shard_map (the traced path with ``axis_name``): a NaN on any shard poisons the loss."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('batch',))
  spec = jax.sharding.PartitionSpec('batch')
  fn = jax.jit(jax.shard_map(lambda f, y: L.supcon(f, y, axis_name='batch'), mesh=mesh,
                             in_specs=(spec, spec), out_specs=jax.sharding.PartitionSpec()))
  np.testing.assert_allclose(fn(F, Y), _value_and_grad('supcon', v=0.07)[0], rtol=1e-6)
  assert np.isnan(fn(_with(F, (5, 0, 0), np.nan), Y))
  assert np.isnan(fn(F, _with(Y, 5, np.inf)))


# ------------------------------------------------------------------------------------------------
# 16. Label dtypes; one view
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', WITH_LABELS)
@pytest.mark.parametrize('labels', [np.array(list('abcdef')), np.array([1, 2, 3, 4, 5, 'x'], object),
                                    np.arange(6) + 1j, list('abcdef')],
                         ids=['str', 'object', 'complex', 'list_of_str'])
def test_non_numeric_labels_raise(name, labels):
  with pytest.raises(ValueError, match='`labels` must be numeric'):
    LOSSES[name](F, labels)


def test_bool_labels_are_two_classes():
  yb = np.array([True, False, False, True, True, False])
  np.testing.assert_allclose(jax.jit(L.supcon)(F, yb),
                             _value_and_grad('supcon', y=yb.astype(np.float32), v=0.07)[0], rtol=1e-6)


@pytest.mark.parametrize('name', SELF_SUPERVISED)
def test_self_supervised_losses_refuse_one_view(name):
  """Positives are the other views: one view used to give 0 with a zero gradient (simclr, dystress)
  while mio refused; all refuse now (also under jit: the check is on the static shape)."""
  with pytest.raises(ValueError, match='`features` must have at least 2 views'):
    LOSSES[name](F[:, :1], Y)
  with pytest.raises(ValueError, match='`features` must have at least 2 views'):
    jax.jit(lambda f: LOSSES[name](f, Y))(F[:, :1])


@pytest.mark.parametrize('name', ['supcon', 'adacon', 'accon'])
def test_supervised_supcon_family_accepts_one_view(name):
  """With labels, one view is legitimate: the positives are the other samples with the same label."""
  value = jax.jit(lambda f: LOSSES[name](f, Y))(F[:, :1])
  assert np.isfinite(value) and value > 0
