"""Jigsaw pretext data (thesis Ch. 3, Sec. 3.4.1): permutation sets, jumbled 3x3 patches, labels.

* Permutation sets ``A`` (Sec. 3.4.1.1). SSLACL, Alg. 3.1 (SETARR): start from the identity, scan all
  ``9!`` permutations in lexicographic order and keep one if its Hamming distance to *every* kept one is
  ``> floor(9 / 2) = 4`` (the scan keeps 1887), then draw ``C - 1`` of them (without replacement
  [GUESS]) plus the identity. SKID: ``C`` permutations drawn uniformly from ``9!`` without a Hamming
  criterion, the identity forced in as label 0 [CODE]. Both are deterministic in ``seed`` and cached
  as ``.npy`` files (the cache directory is the caller's, else ``~/.cache/contrastive_jax``).
* Examples (Alg. 3.2, JUMPAT; Sec. 3.4.1.3): the image is cut into a 3x3 grid of
  ``floor(H/3) x floor(W/3)`` patches numbered row-major; each patch gets its own augmentation
  ``g ~ U(G)``, ``G = R x Tr_x x Tr_y x S`` (rotations {-15, 0, 15} deg, shifts {-6, 0, 6} px =
  ``floor(0.1 * 64)``, scales {1, 1.2}: 54 elements), then a random ``crop x crop`` window (64 in the
  thesis) at ``(ref_y, ref_x) ~ U{0..H'-crop}``; the 9 crops are jumbled by ``tau ~ U(A)`` and additive
  white Gaussian noise ``N(0, 0.01)`` is added. The label is ``tau``'s index in ``A``.

Permutation convention: the jumbled stack is ``jumbled[k] = patches[tau[k]]``, i.e. branch ``k`` of
the network sees grid patch ``tau[k]`` (0-based, row-major).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NUM_PATCHES = 9
GRID = 3
PERMUTATION_KINDS = ('hamming', 'uniform')
# Alg. 3.1 keeps a permutation when its Hamming distance to every kept one exceeds floor(N_P / 2).
HAMMING_THRESHOLD = NUM_PATCHES // 2
# The number of permutations the greedy lexicographic scan of Alg. 3.1 keeps for N_P = 9, d > 4.
GREEDY_SCAN_SIZE = 1887

_FACTORIALS = np.array([math.factorial(i) for i in range(NUM_PATCHES + 1)], np.int64)


# ----------------------------------------------------------------------------- permutation sets


def permutation_rank(perms: np.ndarray) -> np.ndarray:
  """Lexicographic rank (Lehmer code) of each row of ``perms [..., n]`` among all ``n!`` orders."""
  perms = np.asarray(perms)
  n = perms.shape[-1]
  rank = np.zeros(perms.shape[:-1], np.int64)
  for i in range(n - 1):
    smaller_later = np.sum(perms[..., i + 1:] < perms[..., i:i + 1], axis=-1)
    rank += smaller_later * _FACTORIALS[n - 1 - i]
  return rank


def permutation_unrank(ranks: np.ndarray, n: int = NUM_PATCHES) -> np.ndarray:
  """Inverse of :func:`permutation_rank`: ``[...]`` ranks in ``[0, n!)`` -> ``int64 [..., n]``."""
  ranks = np.asarray(ranks, np.int64)
  if np.any(ranks < 0) or np.any(ranks >= math.factorial(n)):
    raise ValueError(f'ranks must lie in [0, {n}!), got values in [{ranks.min()}, {ranks.max()}].')
  remaining = np.broadcast_to(np.arange(n), ranks.shape + (n,)).copy()
  out = np.empty(ranks.shape + (n,), np.int64)
  rest = ranks.copy()
  for i in range(n):
    digit, rest = np.divmod(rest, math.factorial(n - 1 - i))
    out[..., i] = np.take_along_axis(remaining, digit[..., None], axis=-1)[..., 0]
    # Remove the chosen element: shift the tail left by one from the chosen position.
    keep = np.arange(n - i)[None] != digit.reshape(-1, 1)
    remaining = remaining.reshape(-1, n - i)[keep].reshape(ranks.shape + (n - i - 1,))
  return out


def _close_position_maps(n: int, threshold: int) -> np.ndarray:
  """All ``sigma`` in ``S_n`` with more than ``n - threshold - 1`` fixed points (``>= n - threshold``).

  ``p[sigma]`` agrees with ``p`` exactly on the fixed points of ``sigma``, so these maps enumerate every
  permutation within Hamming distance ``<= threshold`` of ``p`` (1339 of them, the identity included,
  for n=9, threshold=4).
  """
  maps = []
  for moved in range(threshold + 1):
    for positions in itertools.combinations(range(n), moved):
      for image in itertools.permutations(positions):
        if all(a != b for a, b in zip(positions, image)):  # a derangement of the moved positions
          sigma = np.arange(n)
          sigma[list(positions)] = image
          maps.append(sigma)
  return np.stack(maps)


def greedy_hamming_scan(n: int = NUM_PATCHES, threshold: int = HAMMING_THRESHOLD) -> np.ndarray:
  """Alg. 3.1 (SETARR), first loop: the greedy lexicographic scan of ``S_n``.

  Starting from the identity, every permutation in lexicographic order is kept iff its Hamming
  distance to every kept one is ``> threshold``. Instead of comparing each candidate with the kept set,
  each kept permutation marks its whole Hamming ball of radius ``threshold`` as excluded (same result,
  O(kept * ball) work). For ``n = 9, threshold = 4`` this keeps :data:`GREEDY_SCAN_SIZE` = 1887.

  Returns:
    ``int64 [K, n]`` kept permutations, lexicographically sorted (row 0 is the identity).
  """
  if n < 1 or n > 10:
    raise ValueError(f'n must be in [1, 10] (n! candidates are enumerated), got {n}.')
  if threshold < 0:
    raise ValueError(f'threshold must be >= 0, got {threshold}.')
  maps = _close_position_maps(n, min(threshold, n))
  excluded = np.zeros(math.factorial(n), bool)
  kept = []
  candidate = 0
  total = math.factorial(n)
  while candidate < total:
    if not excluded[candidate]:
      perm = permutation_unrank(np.array(candidate), n)
      kept.append(candidate)
      excluded[permutation_rank(perm[maps])] = True
    # Jump to the next candidate not yet excluded.
    nxt = np.flatnonzero(~excluded[candidate + 1:])
    if nxt.size == 0:
      break
    candidate = candidate + 1 + int(nxt[0])
  return permutation_unrank(np.array(kept, np.int64), n)


def default_cache_dir() -> str:
  """``~/.cache/contrastive_jax`` (not created until something is written)."""
  return os.path.join(os.path.expanduser('~'), '.cache', 'contrastive_jax')


def _is_valid_set(perms, n: int) -> bool:
  return (isinstance(perms, np.ndarray) and perms.ndim == 2 and perms.shape[1] == n
          and np.array_equal(np.sort(perms, axis=1), np.broadcast_to(np.arange(n), perms.shape)))


def _cached(path: str, build, n: int) -> np.ndarray:
  """Loads ``path`` if it holds a valid permutation array, else builds, writes (atomically), returns."""
  if os.path.exists(path):
    try:
      perms = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
      perms = None
    if _is_valid_set(perms, n):
      return perms.astype(np.int64)
  perms = build()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    np.save(f, perms)
  os.replace(tmp, path)
  return perms


def permutation_set(kind: str, num_classes: int, seed: int = 0, *,
                    cache_dir: Optional[str] = None) -> np.ndarray:
  """The pretext permutation set ``A`` (Sec. 3.4.1.1); row ``c`` is the arrangement of class ``c``.

  Args:
    kind: ``'hamming'`` (SSLACL, Alg. 3.1: the identity + ``C - 1`` drawn without replacement from the
      1887 permutations of the greedy scan, then sorted lexicographically) or ``'uniform'`` (SKID: the
      identity + ``C - 1`` distinct non-identity permutations drawn uniformly from ``9!``, sorted).
    num_classes: ``C`` (500 or 1000 in the thesis).
    seed: selects the draw; the same ``(kind, C, seed)`` always gives the same set.
    cache_dir: directory for the ``.npy`` caches (default :func:`default_cache_dir`).

  Returns:
    ``int64 [C, 9]``, row 0 the identity.

  Raises:
    ValueError: unknown ``kind`` or ``num_classes`` outside ``[1, 1887]`` ('hamming') /
      ``[1, 9!]`` ('uniform').
  """
  if kind not in PERMUTATION_KINDS:
    raise ValueError(f'Unknown permutation set kind {kind!r}; expected one of {PERMUTATION_KINDS}.')
  limit = GREEDY_SCAN_SIZE if kind == 'hamming' else math.factorial(NUM_PATCHES)
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or not 1 <= num_classes <= limit:
    raise ValueError(f'num_classes must be an integer in [1, {limit}] for kind={kind!r}, '
                     f'got {num_classes!r}.')
  num_classes, seed = int(num_classes), int(seed)
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir

  def build():
    rng = np.random.default_rng([seed, num_classes, PERMUTATION_KINDS.index(kind)])
    if kind == 'hamming':
      scan = _cached(os.path.join(cache_dir, f'jigsaw_hamming_scan_n{NUM_PATCHES}_d{HAMMING_THRESHOLD}.npy'),
                     greedy_hamming_scan, NUM_PATCHES)
      if len(scan) != GREEDY_SCAN_SIZE:
        raise ValueError(f'The greedy scan kept {len(scan)} permutations, expected {GREEDY_SCAN_SIZE}.')
      drawn = 1 + rng.choice(len(scan) - 1, size=num_classes - 1, replace=False)
      return scan[np.sort(np.concatenate([[0], drawn]))]
    drawn = 1 + rng.choice(math.factorial(NUM_PATCHES) - 1, size=num_classes - 1, replace=False)
    return permutation_unrank(np.sort(np.concatenate([[0], drawn])))

  path = os.path.join(cache_dir, f'jigsaw_{kind}_c{num_classes}_seed{seed}.npy')
  perms = _cached(path, build, NUM_PATCHES)
  if len(perms) != num_classes:  # a stale file under the same name
    os.remove(path)
    perms = _cached(path, build, NUM_PATCHES)
  return perms


# ----------------------------------------------------------------------------- augmentation set G


@dataclasses.dataclass(frozen=True)
class PatchAugment:
  """The discrete augmentation set ``G = R x Tr_x x Tr_y x S`` of Sec. 3.4.1.3, plus AWGN.

  Attributes:
    rotations: degrees (thesis {-15, 0, 15}).
    translations: pixels, used for both axes (thesis {-6, 0, 6} = ``+-floor(0.1 * 64)``).
    scales: zoom factors (thesis {1, 1.2}; [CODE] {1, 1.1}).
    noise_std: std of the additive white Gaussian noise (thesis variance 0.01 -> 0.1); 0 disables.
    noise_clip: if set, the noisy patch is clipped to ``[-noise_clip, noise_clip]`` ([CODE]).
    brightness: max absolute additive brightness jitter per patch ([CODE]; thesis 0).
    fill_value: value of pixels moved in from outside the patch (-1: black in the ``[-1, 1]`` range).
  """
  rotations: Sequence[float] = (-15.0, 0.0, 15.0)
  translations: Sequence[float] = (-6.0, 0.0, 6.0)
  scales: Sequence[float] = (1.0, 1.2)
  noise_std: float = 0.1
  noise_clip: Optional[float] = None
  brightness: float = 0.0
  fill_value: float = -1.0

  def __post_init__(self):
    for name in ('rotations', 'translations', 'scales'):
      values = tuple(float(v) for v in getattr(self, name))
      if not values or not all(np.isfinite(values)):
        raise ValueError(f'PatchAugment.{name} must be a non-empty sequence of finite numbers, '
                         f'got {getattr(self, name)!r}.')
      object.__setattr__(self, name, values)
    if any(s <= 0 for s in self.scales):
      raise ValueError(f'PatchAugment.scales must be > 0, got {self.scales}.')
    for name in ('noise_std', 'brightness'):
      value = float(getattr(self, name))
      if not np.isfinite(value) or value < 0:
        raise ValueError(f'PatchAugment.{name} must be a finite number >= 0, got {value}.')
    if self.noise_clip is not None and not float(self.noise_clip) > 0:
      raise ValueError(f'PatchAugment.noise_clip must be None or > 0, got {self.noise_clip}.')

  @property
  def size(self) -> int:
    """``|G|`` (54 for the thesis set)."""
    return len(self.rotations) * len(self.translations) ** 2 * len(self.scales)

  def elements(self) -> np.ndarray:
    """``float32 [|G|, 4]`` rows ``(angle_deg, shift_y, shift_x, scale)`` of the Cartesian product."""
    return np.array(list(itertools.product(self.rotations, self.translations, self.translations,
                                           self.scales)), np.float32)


def affine_patch(patch: jax.Array, angle_deg, shift_y, shift_x, scale,
                 fill_value: float = 0.0) -> jax.Array:
  """Rotates by ``angle_deg`` and zooms by ``scale`` about the patch centre, then shifts.

  A positive angle turns the content counter-clockwise as displayed (row 0 on top), like
  ``np.rot90`` and ``scipy.ndimage.rotate``. Output pixel ``q = (y, x)`` samples the input (bilinear)
  at ``c + M (q - c - t) / scale`` with ``M = [[cos a, sin a], [-sin a, cos a]]``, ``c`` the centre and
  ``t = (shift_y, shift_x)``; the input is padded with ``fill_value``.

  Args:
    patch: ``[h, w, channels]``.

  Returns:
    The transformed ``[h, w, channels]`` patch.
  """
  h, w = patch.shape[0], patch.shape[1]
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  theta = jnp.deg2rad(angle_deg)
  dy, dx = (yy - cy - shift_y) / scale, (xx - cx - shift_x) / scale
  src_y = cy + jnp.cos(theta) * dy + jnp.sin(theta) * dx
  src_x = cx - jnp.sin(theta) * dy + jnp.cos(theta) * dx
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(channel, [src_y, src_x], order=1,
                                                             mode='constant', cval=fill_value)
  return jnp.moveaxis(jax.vmap(sample)(jnp.moveaxis(patch, -1, 0)), 0, -1)


def grid_patches(image: jax.Array) -> jax.Array:
  """Cuts ``image [H, W, C]`` into the 3x3 grid of ``floor(H/3) x floor(W/3)`` patches (row-major).

  Returns ``[9, H', W', C]`` (Alg. 3.2: ``P' = F[row H' : (row+1) H', col W' : (col+1) W']``, with
  ``row = i // 3``, ``col = i % 3`` for ``i = 0..8``).
  """
  h, w = image.shape[0] // GRID, image.shape[1] // GRID
  image = image[:GRID * h, :GRID * w]
  patches = image.reshape(GRID, h, GRID, w, image.shape[-1]).transpose(0, 2, 1, 3, 4)
  return patches.reshape(NUM_PATCHES, h, w, image.shape[-1])


def check_image_shape(shape: Sequence[int], crop_size: int) -> None:
  """``ValueError`` unless ``shape = (H, W, C)`` has grid patches of side ``>= crop_size``."""
  if len(shape) != 3:
    raise ValueError(f'image must have shape [H, W, C], got {tuple(shape)}.')
  if isinstance(crop_size, bool) or int(crop_size) != crop_size or crop_size < 1:
    raise ValueError(f'crop_size must be a positive integer, got {crop_size!r}.')
  side = min(shape[0], shape[1]) // GRID
  if side < crop_size:
    raise ValueError(f'crop_size={crop_size} exceeds the grid patch side floor(min(H, W)/3)={side} of '
                     f'images of shape {tuple(shape)}.')


def jigsaw_example(key: jax.Array, image: jax.Array, permutations: jax.Array, crop_size: int,
                   augment: Optional[PatchAugment] = None, *, crop_then_augment: bool = False,
                   max_crop_offset: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """One pretext example from one slice (Alg. 3.2, JUMPAT; jit-able; explicit key).

  Args:
    key: PRNG key; it draws ``g`` and the crop offset of every patch, ``tau`` and the noise.
    image: ``[H, W, C]`` float slice.
    permutations: ``int [num_classes, 9]`` set ``A`` (:func:`permutation_set`).
    crop_size: side of the square crop of each patch (64 in the thesis).
    augment: the set ``G`` and AWGN; ``None``: no augmentation (validation, Sec. 3.5.2.1) -- the
      random crop and the random arrangement, which define the task, are still drawn.
    crop_then_augment: [CODE] order (crop, then ``g``); the thesis augments the patch, then crops.
    max_crop_offset: largest crop offset (``ref ~ U{0..max}``); None: ``H' - crop`` (thesis: 21 for
      85 -> 64; [CODE]: 9).

  Returns:
    ``(patches [9, crop, crop, C], label)``: ``patches[k] = crop(g_tau[k](grid[tau[k]]))``, ``label``
    the int32 index of ``tau`` in ``permutations``.
  """
  check_image_shape(image.shape, crop_size)
  k_g, k_crop, k_tau, k_noise, k_bright = jax.random.split(key, 5)
  patches = grid_patches(image.astype(jnp.float32))
  max_y, max_x = patches.shape[1] - crop_size, patches.shape[2] - crop_size
  if max_crop_offset is not None:
    if isinstance(max_crop_offset, bool) or int(max_crop_offset) != max_crop_offset or max_crop_offset < 0:
      raise ValueError(f'max_crop_offset must be None or an integer >= 0, got {max_crop_offset!r}.')
    max_y, max_x = min(max_y, int(max_crop_offset)), min(max_x, int(max_crop_offset))
  offsets = jnp.stack([
      jax.random.randint(jax.random.fold_in(k_crop, 0), (NUM_PATCHES,), 0, max_y + 1),
      jax.random.randint(jax.random.fold_in(k_crop, 1), (NUM_PATCHES,), 0, max_x + 1),
  ], axis=1)
  crop = jax.vmap(lambda p, o: jax.lax.dynamic_slice(
      p, (o[0], o[1], 0), (crop_size, crop_size, p.shape[-1])))

  if augment is not None:
    elements = jnp.asarray(augment.elements())
    g = elements[jax.random.randint(k_g, (NUM_PATCHES,), 0, elements.shape[0])]
    transform = jax.vmap(lambda p, e: affine_patch(p, e[0], e[1], e[2], e[3], augment.fill_value))
    patches = crop(transform(patches, g), offsets) if not crop_then_augment else transform(
        crop(patches, offsets), g)
  else:
    patches = crop(patches, offsets)

  label = jax.random.randint(k_tau, (), 0, permutations.shape[0]).astype(jnp.int32)
  patches = patches[jnp.asarray(permutations)[label]]

  if augment is not None:
    if augment.brightness:
      patches = patches + jax.random.uniform(k_bright, (NUM_PATCHES, 1, 1, 1), minval=-augment.brightness,
                                             maxval=augment.brightness)
    if augment.noise_std:
      patches = patches + augment.noise_std * jax.random.normal(k_noise, patches.shape)
    if augment.noise_clip is not None:
      patches = jnp.clip(patches, -augment.noise_clip, augment.noise_clip)
  return patches, label


def jigsaw_batch(key: jax.Array, images: jax.Array, permutations: jax.Array, crop_size: int,
                 augment: Optional[PatchAugment] = None, *, crop_then_augment: bool = False,
                 max_crop_offset: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """:func:`jigsaw_example` for every image of ``images [B, H, W, C]``; image ``i`` uses
  ``fold_in(key, i)``. Returns ``(patches [B, 9, crop, crop, C], labels int32 [B])``."""
  if images.ndim != 4:
    raise ValueError(f'images must have shape [B, H, W, C], got {images.shape}.')
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(images.shape[0]))
  return jax.vmap(lambda k, im: jigsaw_example(
      k, im, permutations, crop_size, augment, crop_then_augment=crop_then_augment,
      max_crop_offset=max_crop_offset))(keys, images)


def to_model_range(images: jax.Array, channels: int = 3) -> jax.Array:
  """``[0, 1]`` grayscale ``[..., H, W, 1]`` -> ``[-1, 1]`` with ``channels`` copies ([CODE] B1:
  grayscale repeated to 3 channels, ``x / 127.5 - 1`` on uint8)."""
  if images.shape[-1] != 1 and images.shape[-1] != channels:
    raise ValueError(f'images must have 1 or {channels} channels, got shape {images.shape}.')
  images = 2.0 * images.astype(jnp.float32) - 1.0
  if images.shape[-1] != channels:
    images = jnp.repeat(images, channels, axis=-1)
  return images


# ----------------------------------------------------------------------------- downstream slicing


def divide_slices(num_slices: int, parts: int = NUM_PATCHES) -> list[tuple[int, int]]:
  """Alg. 3.3 (DIVFRAM): contiguous ``[start, end)`` groups of ``num_slices`` slices, one per branch.

  Group ``i`` (1-based) takes ``n = ceil(remaining / (parts - i + 1))`` slices. The printed algorithm
  writes ``N_S`` for ``remaining``, which would make the groups overlap the end of the scan; the
  remaining-count reading splits ``N_S`` into near-equal parts (36 -> 4 each). Groups are empty when
  ``num_slices < parts``.
  """
  if isinstance(num_slices, bool) or int(num_slices) != num_slices or num_slices < 1:
    raise ValueError(f'num_slices must be a positive integer, got {num_slices!r}.')
  groups, start = [], 0
  for i in range(1, parts + 1):
    n = -(-(num_slices - start) // (parts - i + 1))
    groups.append((start, start + n))
    start += n
  return groups


def divide_slices_index(num_slices: int, parts: int = NUM_PATCHES) -> tuple[np.ndarray, np.ndarray]:
  """:func:`divide_slices` as static gather indices ``int32 [parts, n_max]`` and a bool mask.

  Padding positions repeat the group's first slice (or slice 0 for an empty group) and are masked.
  """
  groups = divide_slices(num_slices, parts)
  n_max = max(end - start for start, end in groups)
  index = np.zeros((parts, n_max), np.int32)
  mask = np.zeros((parts, n_max), bool)
  for g, (start, end) in enumerate(groups):
    index[g, :] = start if end > start else 0
    index[g, :end - start] = np.arange(start, end)
    mask[g, :end - start] = True
  return index, mask


def sample_eval_slices(key: jax.Array, num_slices: int, num_draws: int = 8,
                       slices_per_draw: int = 16) -> jax.Array:
  """SKID evaluation slice indices (Sec. 3.4.2.3): ``num_draws`` draws of ``slices_per_draw`` indices
  ``~ round(Normal(N_S / 2, N_S / 4))`` clipped to ``[0, N_S - 1]``, each draw sorted so the slices
  keep their order along the scan for the ConvLSTM [GUESS: with replacement, sorted].

  Returns ``int32 [num_draws, slices_per_draw]``.
  """
  if isinstance(num_slices, bool) or int(num_slices) != num_slices or num_slices < 1:
    raise ValueError(f'num_slices must be a positive integer, got {num_slices!r}.')
  z = jax.random.normal(key, (num_draws, slices_per_draw))
  index = jnp.round(num_slices / 2.0 + (num_slices / 4.0) * z)
  return jnp.sort(jnp.clip(index, 0, num_slices - 1).astype(jnp.int32), axis=-1)
