"""CoWPro data (thesis Ch. 7): phantom volumes, offline superpixel pseudo-masks, episodic queries.

* :func:`make_phantom_volumes` -- deterministic synthetic 2-D "abdominal" slices stacked into volumes
  (an elliptic body with a fat rim, spine, liver, kidneys and spleen as ellipsoids whose cross-sections
  change along the slice axis), with organ labels in the CHAOS convention (1 liver, 2 right kidney,
  3 left kidney, 4 spleen). Used by the ``synthetic`` config so a run needs no data download.
* :func:`body_mask`, :func:`superpixels`, :func:`build_pseudo_masks` -- the offline pseudo-mask step of
  Sec. 7.4.1.1 (Felzenszwalb superpixels, ``skimage.segmentation.felzenszwalb``, restricted to a body
  mask obtained by an intensity threshold, the largest connected component and hole filling, following
  Ouyang et al. 2020), in NumPy, cached as arrays.
* :func:`synthesize_query`, :func:`sample_episode` -- jit-able episode synthesis (Sec. 7.4.1.5):
  ``M_s = [S_p == l_s]`` with ``l_s`` uniform over the slice's superpixels (Eq. 7.1), the query
  ``I_q = T_geo(T_int(I_s))`` and its target ``T_geo(M_s)`` (the same geometric warp, bilinear on the
  mask then thresholded at 0.5, i.e. the rounding of the author's code).

Images are float32 ``[H, W]`` slices with intensities in [0, 1]; pseudo-masks are int32 label maps with
0 outside the body and superpixels numbered 1..K.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# CHAOS MR label ids (Ground/*.png grey values 63, 126, 189, 252 -> 1..4).
ORGANS = ('liver', 'right_kidney', 'left_kidney', 'spleen')
ORGAN_IDS = {name: i + 1 for i, name in enumerate(ORGANS)}


@dataclasses.dataclass(frozen=True)
class Volumes:
  """Scans with organ labels.

  Attributes:
    images: float32 ``[V, S, H, W]`` intensities in [0, 1].
    labels: int32 ``[V, S, H, W]`` organ ids (0 background, ``ORGAN_IDS`` otherwise).
    ids: one name per scan.
  """
  images: np.ndarray
  labels: np.ndarray
  ids: tuple

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape != self.labels.shape:
      raise ValueError(f'`images` and `labels` must both be [V, S, H, W] with the same shape; got '
                       f'{self.images.shape} and {self.labels.shape}.')
    if len(self.ids) != self.images.shape[0]:
      raise ValueError(f'`ids` must name each of the {self.images.shape[0]} scans; got {len(self.ids)}.')

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def select(self, indices) -> 'Volumes':
    indices = list(indices)
    return Volumes(self.images[indices], self.labels[indices], tuple(self.ids[i] for i in indices))


@dataclasses.dataclass(frozen=True)
class PseudoMaskSet:
  """Training slices with their superpixel label maps (every slice has >= 1 superpixel).

  Attributes:
    images: float32 ``[N, H, W]``.
    superpixels: int32 ``[N, H, W]``; 0 outside the body mask, superpixels 1..counts[i].
    counts: int32 ``[N]`` number of superpixels of each slice.
  """
  images: np.ndarray
  superpixels: np.ndarray
  counts: np.ndarray

  def __len__(self) -> int:
    return int(self.counts.shape[0])


# ----------------------------------------------------------------------------------------------------
# Synthetic phantoms.

def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
  c, s = np.cos(angle), np.sin(angle)
  dy, dx = yy - cy, xx - cx
  u, v = c * dy + s * dx, -s * dy + c * dx
  return (u / ry) ** 2 + (v / rx) ** 2


def make_phantom_volumes(num_volumes: int, num_slices: int = 12, size: int = 64,
                         seed: int = 0) -> Volumes:
  """Deterministic synthetic abdominal MR-like volumes (a function of ``(seed, volume index)`` only).

  Each organ is an ellipsoid: its in-plane ellipse is scaled by ``sqrt(1 - z'^2)`` at normalised slice
  offset ``z'`` from the organ's centre slice, so it occupies a sub-range of slices like a real organ.
  Positions follow radiological display (patient's right on the image's left): liver large on the
  left, spleen on the right, kidneys posterior (bottom) on both sides of the spine. Each volume jitters
  positions, sizes, intensities, adds a smooth bias field and Gaussian noise.

  Args:
    num_volumes: number of scans V (>= 1).
    num_slices: slices per scan S (>= 3).
    size: in-plane size H = W (>= 16).
    seed: base seed.

  Returns:
    :class:`Volumes` with ids ``phantom_<seed>_<v>``.
  """
  if int(num_volumes) != num_volumes or num_volumes < 1:
    raise ValueError(f'`num_volumes` must be an integer >= 1; got {num_volumes!r}.')
  if int(num_slices) != num_slices or num_slices < 3:
    raise ValueError(f'`num_slices` must be an integer >= 3; got {num_slices!r}.')
  if int(size) != size or size < 16:
    raise ValueError(f'`size` must be an integer >= 16; got {size!r}.')
  num_volumes, num_slices, size = int(num_volumes), int(num_slices), int(size)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)  # in [0, 1]
  images = np.zeros((num_volumes, num_slices, size, size), np.float32)
  labels = np.zeros((num_volumes, num_slices, size, size), np.int32)
  # (label, centre y, centre x, radius y, radius x, first slice, last slice (fractions), intensity)
  organs = ((1, 0.45, 0.33, 0.17, 0.16, 0.00, 0.70, 0.55),   # liver (image left)
            (4, 0.47, 0.73, 0.10, 0.08, 0.15, 0.60, 0.75),   # spleen (image right)
            (2, 0.64, 0.35, 0.09, 0.07, 0.40, 0.95, 0.92),  # right kidney (image left)
            (3, 0.64, 0.65, 0.09, 0.07, 0.35, 0.90, 0.92))  # left kidney (image right)
  for v in range(num_volumes):
    rng = np.random.default_rng([seed, v, 7])
    body_ry, body_rx = 0.36 * rng.uniform(0.93, 1.05), 0.45 * rng.uniform(0.93, 1.05)
    body_cy = 0.5 + rng.uniform(-0.02, 0.02)
    params = []
    for lab, cy, cx, ry, rx, z0, z1, inten in organs:
      params.append((lab, cy + rng.uniform(-0.03, 0.03), cx + rng.uniform(-0.03, 0.03),
                     ry * rng.uniform(0.85, 1.15), rx * rng.uniform(0.85, 1.15),
                     z0 + rng.uniform(-0.05, 0.05), z1 + rng.uniform(-0.05, 0.05),
                     inten + rng.uniform(-0.05, 0.05), rng.uniform(-0.4, 0.4)))
    bias = 1.0 + 0.15 * ((yy - 0.5) * rng.uniform(-1, 1) + (xx - 0.5) * rng.uniform(-1, 1))
    for s in range(num_slices):
      z = (s + 0.5) / num_slices
      img = np.zeros((size, size))
      lab_map = np.zeros((size, size), np.int32)
      body = _ellipse(yy, xx, body_cy, 0.5, body_ry, body_rx)
      img[body <= 1.0] = 0.78  # subcutaneous fat (bright on T2)
      img[body <= 0.80] = 0.30  # muscle / soft tissue
      spine = _ellipse(yy, xx, body_cy + 0.8 * body_ry, 0.5, 0.05, 0.05)
      img[spine <= 1.0] = 0.12
      for lab, cy, cx, ry, rx, z0, z1, inten, ang in params:
        zc, zr = 0.5 * (z0 + z1), 0.5 * (z1 - z0)
        zn = (z - zc) / zr
        if abs(zn) >= 1.0:
          continue
        shrink = np.sqrt(1.0 - zn ** 2)
        inside = _ellipse(yy, xx, cy, cx, ry * shrink, rx * shrink, ang) <= 1.0
        inside &= body <= 0.8
        img[inside] = inten
        lab_map[inside] = lab
      img = img * bias + rng.normal(0.0, 0.02, img.shape)
      images[v, s] = np.clip(img, 0.0, 1.0)
      labels[v, s] = lab_map
  return Volumes(images, labels, tuple(f'phantom_{seed}_{v}' for v in range(num_volumes)))


def training_slices(volumes: Volumes, exclude_labels: Sequence[int] = ()) -> np.ndarray:
  """All slices ``[N, H, W]`` of ``volumes`` except those containing a label in ``exclude_labels``.

  The label-exclusion protocol of Sec. 7.4.1.5: slices showing the test classes are not used for
  self-supervised training (e.g. ``exclude_labels=(2, 3)`` when evaluating the kidneys).
  """
  exclude = [int(l) for l in exclude_labels]
  keep = np.ones(volumes.images.shape[:2], bool)
  for lab in exclude:
    keep &= ~np.any(volumes.labels == lab, axis=(2, 3))
  slices = volumes.images[keep]
  if slices.shape[0] == 0:
    raise ValueError(f'No training slice is left after excluding labels {exclude}.')
  return slices


# ----------------------------------------------------------------------------------------------------
# Offline pseudo-masks (Sec. 7.4.1.1).

def _check_slice(image, name='image') -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 2 or min(image.shape) < 2:
    raise ValueError(f'`{name}` must be a 2-D slice [H, W]; got shape {image.shape}.')
  if not np.issubdtype(image.dtype, np.number):
    raise ValueError(f'`{name}` must be numeric; got dtype {image.dtype}.')
  if not np.all(np.isfinite(image)):
    raise ValueError(f'`{name}` has non-finite values.')
  return image.astype(np.float64)


def body_mask(image, threshold: float = 0.05) -> np.ndarray:
  """Binary body mask of a slice: ``image > threshold``, largest connected component, holes filled.

  As Ouyang et al. (2020)'s pseudo-label script: a slice with no pixel above the threshold gives an
  empty mask. ``threshold`` is in the image's intensity units ([0, 1] here; GUESS: 0.05, the thesis
  gives none).
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  image = _check_slice(image)
  fg = image > threshold
  if not fg.any():
    return fg
  components, count = ndimage.label(fg)
  sizes = np.bincount(components.ravel())[1:]
  largest = components == (int(np.argmax(sizes)) + 1)
  return ndimage.binary_fill_holes(largest)


def superpixels(image, *, scale: float = 1.0, sigma: float = 1.0, min_size: int = 400,
                body_threshold: float = 0.05) -> np.ndarray:
  """Felzenszwalb superpixels of one slice restricted to its body mask, numbered 1..K (0 outside).

  ``skimage.segmentation.felzenszwalb(image, scale, sigma, min_size)`` (Sec. 7.4.1.1; min_size=400,
  sigma=1 as Ouyang et al. 2020 for 256x256 slices); pixels outside :func:`body_mask` are set to 0
  and the remaining superpixels renumbered consecutively in order of their first appearance.
  """
  from skimage.segmentation import felzenszwalb  # pylint: disable=g-import-not-at-top
  image = _check_slice(image)
  if min_size < 1 or sigma < 0 or scale <= 0:
    raise ValueError(f'Felzenszwalb needs scale > 0, sigma >= 0, min_size >= 1; got scale={scale}, '
                     f'sigma={sigma}, min_size={min_size}.')
  segments = felzenszwalb(image, scale=float(scale), sigma=float(sigma), min_size=int(min_size))
  segments = segments.astype(np.int64) + 1
  segments[~body_mask(image, body_threshold)] = 0
  present = segments[segments > 0]
  _, first = np.unique(present, return_index=True)
  order = np.unique(present)[np.argsort(first)]
  lookup = np.zeros(int(segments.max()) + 1, np.int32)
  lookup[order] = np.arange(1, order.size + 1, dtype=np.int32)
  return lookup[segments]


def build_pseudo_masks(slices, *, cache_dir: Optional[str] = None, scale: float = 1.0,
                       sigma: float = 1.0, min_size: int = 400,
                       body_threshold: float = 0.05) -> PseudoMaskSet:
  """Superpixel maps of every slice (offline, NumPy); slices without any superpixel are dropped.

  Args:
    slices: ``[N, H, W]`` float intensities.
    cache_dir: when given, the result is stored in / loaded from
      ``cache_dir/superpixels_<hash>.npz`` keyed by the slices' bytes and the parameters.
    scale, sigma, min_size: ``felzenszwalb`` arguments.
    body_threshold: see :func:`body_mask`.

  Returns:
    A :class:`PseudoMaskSet`.
  """
  slices = np.asarray(slices, np.float32)
  if slices.ndim != 3 or slices.shape[0] < 1:
    raise ValueError(f'`slices` must be [N, H, W] with N >= 1; got shape {slices.shape}.')
  params = dict(scale=float(scale), sigma=float(sigma), min_size=int(min_size),
                body_threshold=float(body_threshold))
  path = None
  if cache_dir is not None:
    digest = hashlib.sha1(slices.tobytes() + json.dumps(params, sort_keys=True).encode())
    digest.update(str(slices.shape).encode())
    path = os.path.join(cache_dir, f'superpixels_{digest.hexdigest()[:16]}.npz')
    if os.path.exists(path):
      with np.load(path) as cached:
        return PseudoMaskSet(cached['images'], cached['superpixels'], cached['counts'])
  maps = np.stack([superpixels(s, **params) for s in slices])
  counts = maps.reshape(maps.shape[0], -1).max(axis=1).astype(np.int32)
  keep = counts > 0
  if not keep.any():
    raise ValueError('No slice has a superpixel inside its body mask; lower `body_threshold` '
                     f'(={body_threshold}) or `min_size` (={min_size}).')
  result = PseudoMaskSet(slices[keep], maps[keep].astype(np.int32), counts[keep])
  if path is not None:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + '.tmp.npz'
    np.savez(tmp, images=result.images, superpixels=result.superpixels, counts=result.counts)
    os.replace(tmp, path)
  return result


# ----------------------------------------------------------------------------------------------------
# Query synthesis (Sec. 7.4.1.5): jit-able JAX with explicit keys.

@dataclasses.dataclass(frozen=True)
class QueryAugment:
  """Ranges of ``T_geo`` (affine + elastic) and ``T_int`` (gamma). Defaults: the author's code
  ([code] ``sabs_aug``: rotate +-5 deg, shift +-5 px, shear +-5 deg, isotropic scale in (0.9, 1.2),
  elastic alpha=10 sigma=5, gamma in (0.5, 1.5)); the thesis names only the transform types."""
  rotate: float = 5.0
  shift: float = 5.0
  shear: float = 5.0
  scale: tuple = (0.9, 1.2)
  elastic_alpha: float = 10.0
  elastic_sigma: float = 5.0
  gamma: tuple = (0.5, 1.5)

  def __post_init__(self):
    for name in ('rotate', 'shift', 'shear', 'elastic_alpha', 'elastic_sigma'):
      value = getattr(self, name)
      if not np.isfinite(value) or value < 0:
        raise ValueError(f'`{name}` must be a finite number >= 0; got {value!r}.')
    for name in ('scale', 'gamma'):
      lo, hi = getattr(self, name)
      if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f'`{name}` must be a range (lo, hi) with 0 < lo <= hi; got {(lo, hi)}.')

  @classmethod
  def identity(cls) -> 'QueryAugment':
    return cls(rotate=0.0, shift=0.0, shear=0.0, scale=(1.0, 1.0), elastic_alpha=0.0,
               gamma=(1.0, 1.0))


def _gaussian_blur(field: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur, kernel size ``int(4 sigma) | 1`` (as cv2 in the author's code), zero
  padding."""
  radius = (int(4 * sigma) | 1) // 2
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernel = jnp.exp(-0.5 * (t / sigma) ** 2)
  kernel = kernel / kernel.sum()
  field = jax.scipy.signal.convolve(field, kernel[None, :], mode='same')
  return jax.scipy.signal.convolve(field, kernel[:, None], mode='same')


def sample_geometry(key: jax.Array, shape: tuple, aug: QueryAugment) -> jax.Array:
  """Source coordinates ``[2, H, W]`` of ``T_geo`` for every output pixel.

  ``T_geo`` = affine then elastic: output pixel ``q`` reads the input at
  ``L^-1 (q + d(q) - c - t) + c`` with ``L = s R(theta) Sh(phi)`` about the image centre ``c``,
  translation ``t`` and elastic displacement ``d = alpha * blur_sigma(U(-1, 1))`` (Simard et al. 2003).
  """
  h, w = shape
  k_rot, k_shift, k_shear, k_scale, k_el = jax.random.split(key, 5)
  theta = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-aug.rotate, maxval=aug.rotate))
  shift = jax.random.uniform(k_shift, (2,), minval=-aug.shift, maxval=aug.shift)
  phi = jnp.deg2rad(jax.random.uniform(k_shear, (), minval=-aug.shear, maxval=aug.shear))
  s = jax.random.uniform(k_scale, (), minval=aug.scale[0], maxval=aug.scale[1])
  rot = jnp.array([[jnp.cos(theta), -jnp.sin(theta)], [jnp.sin(theta), jnp.cos(theta)]])
  shear = jnp.array([[1.0, 0.0], [jnp.tan(phi), 1.0]])  # x' = x + tan(phi) y  (rows: y, x)
  linear = s * rot @ shear
  inverse = jnp.linalg.inv(linear)
  centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0])
  grid = jnp.stack(jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                                indexing='ij'))
  if aug.elastic_alpha > 0 and aug.elastic_sigma > 0:
    noise = jax.random.uniform(k_el, (2, h, w), minval=-1.0, maxval=1.0)
    grid = grid + aug.elastic_alpha * jax.vmap(lambda f: _gaussian_blur(f, aug.elastic_sigma))(noise)
  rel = grid - (centre + shift)[:, None, None]
  return jnp.einsum('ij,jhw->ihw', inverse, rel) + centre[:, None, None]


def warp(image: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear sampling of ``image [H, W]`` at ``coords [2, H, W]``; zero outside."""
  return jax.scipy.ndimage.map_coordinates(image, [coords[0], coords[1]], order=1, mode='constant',
                                           cval=0.0)


def gamma_transform(image: jax.Array, gamma: jax.Array) -> jax.Array:
  """``T_int``: ``c_min + r ((I - c_min) / r) ** gamma`` with ``r = max(I) - min(I)`` ([code])."""
  lo, hi = jnp.min(image), jnp.max(image)
  r = jnp.maximum(hi - lo, 1e-6)
  return lo + r * jnp.clip((image - lo) / r, 0.0, 1.0) ** gamma


def synthesize_query(key: jax.Array, image: jax.Array, mask: jax.Array,
                     aug: QueryAugment = QueryAugment()):
  """``(I_q, M_q) = (T_geo(T_int(I_s)), T_geo(M_s))`` for one ``[H, W]`` slice and binary mask.

  The mask is warped bilinearly by the same coordinates and thresholded at 0.5, so an identity
  transform returns the inputs exactly.
  """
  image = jnp.asarray(image, jnp.float32)
  if image.ndim != 2 or jnp.shape(mask) != image.shape:
    raise ValueError(f'`image` and `mask` must be [H, W] of the same shape; got {image.shape} and '
                     f'{jnp.shape(mask)}.')
  k_geo, k_gamma = jax.random.split(key)
  gamma = jax.random.uniform(k_gamma, (), minval=aug.gamma[0], maxval=aug.gamma[1])
  coords = sample_geometry(k_geo, image.shape, aug)
  query = warp(gamma_transform(image, gamma), coords)
  query_mask = warp(jnp.asarray(mask, jnp.float32), coords) > 0.5
  return query, query_mask


def sample_episode(key: jax.Array, images: jax.Array, superpixel_maps: jax.Array,
                   counts: jax.Array, aug: QueryAugment = QueryAugment()) -> dict:
  """One self-supervised episode from a :class:`PseudoMaskSet` held as device arrays.

  A slice is drawn uniformly, then a superpixel ``l_s ~ U{1..K}`` (Eq. 7.1), and the query synthesised
  by :func:`synthesize_query`. Returns float32 ``support_image, support_mask, query_image,
  query_mask`` (masks 0/1), each ``[H, W]``.
  """
  images, superpixel_maps, counts = (jnp.asarray(images), jnp.asarray(superpixel_maps),
                                     jnp.asarray(counts))
  k_slice, k_label, k_query = jax.random.split(key, 3)
  index = jax.random.randint(k_slice, (), 0, counts.shape[0])
  label = jax.random.randint(k_label, (), 1, counts[index] + 1)
  image = images[index]
  mask = (superpixel_maps[index] == label).astype(jnp.float32)
  query, query_mask = synthesize_query(k_query, image, mask, aug)
  return {'support_image': image, 'support_mask': mask, 'query_image': query,
          'query_mask': query_mask.astype(jnp.float32)}
