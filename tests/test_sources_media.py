"""Video and volume sources (EchoNet-Dynamic, MRNet, CHAOS MR) on tiny real-format fixtures.

Every fixture is written on the fly in its real file format: MJPG AVI videos (OpenCV
VideoWriter), ``.npy`` volumes, DICOM slices (pydicom FileDataset) and PNG masks. Expected values
are computed in float64 NumPy from the definitions in the source modules' docstrings (AdaCon
Sec. IV-B clip sampling, nearest-slice resampling, CHAOS grey-value ranges and per-scan
99.5th-percentile clipping).
"""

from __future__ import annotations

import csv
import glob
import os
import re

import numpy as np
import pytest

from contrastive_jax.data import pipeline
from contrastive_jax.data import sources
from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import chaos
from contrastive_jax.data.sources import echonet
from contrastive_jax.data.sources import mrnet

import cv2  # pylint: disable=wrong-import-position  (the 'media' extra; installed by '.[test]')
import pydicom  # pylint: disable=wrong-import-position


# --------------------------------------------------------------------------------------------------
# sharding across 2 processes: union = every sample, no overlap
# --------------------------------------------------------------------------------------------------

def _row_ids(rows: np.ndarray, table: np.ndarray) -> list[int]:
  """Index into ``table`` (uint8 items) of each batch row (each must match exactly one entry).

  Batches may carry the items as stored or, as ``pipeline`` does for uint8, scaled by 1/255.
  """
  if len(rows) == 0:
    return []
  flat_rows = np.asarray(rows).reshape(len(rows), -1)
  raw = np.asarray(table).reshape(len(table), -1)
  candidates = (raw.astype(flat_rows.dtype), raw.astype(np.float32) / np.float32(255.0))
  ids = []
  for row in flat_rows:
    hits = [np.flatnonzero(np.all(c == row, axis=1)) for c in candidates]
    hits = next((h for h in hits if h.size), hits[0])
    assert hits.size == 1, f'row matches {hits.size} samples'
    ids.append(int(hits[0]))
  return ids


def _check_two_process_sharding(split, global_batch_size: int):
  table = np.asarray(split.x)
  assert len(set(map(bytes, table.reshape(len(table), -1)))) == len(table), 'fixture not distinct'
  num = len(split)
  assert num % global_batch_size == 0  # then one epoch covers every sample
  seen = []
  for step in range(pipeline.steps_per_epoch(num, global_batch_size)):
    local = [_row_ids(pipeline.train_batch(split, global_batch_size, seed=5, step=step,
                                           process_index=p, process_count=2)['x'], table)
             for p in (0, 1)]
    whole = _row_ids(pipeline.train_batch(split, global_batch_size, seed=5, step=step)['x'], table)
    assert not set(local[0]) & set(local[1])
    assert local[0] + local[1] == whole
    seen += whole
  assert sorted(seen) == list(range(num))

  evaluated = []
  for p in (0, 1):
    for batch in pipeline.eval_batches(split, 6, process_index=p, process_count=2):
      real = batch['mask'] > 0
      evaluated += _row_ids(batch['x'][real], table)
  assert sorted(evaluated) == list(range(num))

  shards = [base.shard_indices(num, p, 2) for p in (0, 1)]
  assert not set(shards[0]) & set(shards[1])
  decoded = np.concatenate([split.x.subset(s)[np.arange(len(s))] for s in shards])
  np.testing.assert_array_equal(decoded, table)


# --------------------------------------------------------------------------------------------------
# EchoNet-Dynamic: FileList.csv + Videos/*.avi
# --------------------------------------------------------------------------------------------------

def _time_value(t: int) -> int:
  return 10 + 12 * t


def _id_value(v: int) -> int:
  return 30 + 25 * v


def _write_video(path: str, video_id: int, num_frames: int, side: int = 16):
  """Grey MJPG video: left half = _time_value(frame), right half = _id_value(video)."""
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 50, (side, side))
  assert writer.isOpened()
  for t in range(num_frames):
    frame = np.empty((side, side, 3), np.uint8)
    frame[:, :side // 2] = _time_value(t)
    frame[:, side // 2:] = _id_value(video_id)
    writer.write(frame)
  writer.release()


_ECHO_ROWS = [  # (split, number of frames); video 3 is short (padding)
    ('TRAIN', 12), ('TRAIN', 12), ('TRAIN', 11), ('TRAIN', 5),
    ('VAL', 12), ('VAL', 12), ('TEST', 12), ('TEST', 12)]


def _make_echonet(root, rows=_ECHO_ROWS, side: int = 16, ef=None, overrides=None):
  os.makedirs(os.path.join(root, 'Videos'), exist_ok=True)
  table = []
  for v, (split, frames) in enumerate(rows):
    name = f'0X{v:04X}'
    _write_video(os.path.join(root, 'Videos', name + '.avi'), v, frames, side)
    row = {'FileName': name, 'EF': 40.0 + 3.5 * v if ef is None else ef[v], 'ESV': 20.0 + v,
           'EDV': 60.0 + v, 'FrameHeight': side, 'FrameWidth': side, 'FPS': 50,
           'NumberOfFrames': frames, 'Split': split}
    row.update((overrides or {}).get(v, {}))
    table.append(row)
  with open(os.path.join(root, 'FileList.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
  return root


@pytest.fixture(scope='module')
def echo_root(tmp_path_factory):
  return _make_echonet(str(tmp_path_factory.mktemp('echonet')))


def _expected_clip_values(num_frames: int, count: int, period: int) -> np.ndarray:
  """Left-half grey value of each clip frame: raw frame k * period, 0 (black) past the end."""
  raw = np.arange(count) * period
  return np.where(raw < num_frames, 10.0 + 12.0 * raw, 0.0)


@pytest.mark.parametrize('side', [16, 32])
def test_echonet_clips_follow_the_sampling_rule(tmp_path, side):
  root = _make_echonet(str(tmp_path), side=side)
  ds = echonet.load_echonet(root, frames=4, period=2, size=16, train_window=6)
  assert ds.kind == 'video'
  assert ds.train.x.shape == (4, 6, 16, 16, 3) and ds.train.x.dtype == np.uint8
  assert ds.val.x.shape == (2, 4, 16, 16, 3) and ds.test.x.shape == (2, 4, 16, 16, 3)
  np.testing.assert_array_equal(ds.train.y, np.float32([40.0, 43.5, 47.0, 50.5]))
  assert ds.train.y.dtype == np.float32
  lengths = [frames for _, frames in _ECHO_ROWS]
  for split, offset, count in ((ds.train, 0, 6), (ds.val, 4, 4), (ds.test, 6, 4)):
    clips = split.x[np.arange(len(split))].astype(np.float64)
    for i, clip in enumerate(clips):
      expected = _expected_clip_values(lengths[offset + i], count, 2)
      np.testing.assert_allclose(clip[:, :, :8].mean(axis=(1, 2, 3)), expected, atol=3)
      real = expected > 0
      np.testing.assert_allclose(clip[real][:, :, 8:].mean(axis=(1, 2, 3)),
                                 _id_value(offset + i), atol=3)
      assert np.all(clip[~real] == 0)
  # Eval clips are a deterministic function of the index.
  np.testing.assert_array_equal(ds.val.x[1], ds.val.x[1])


def test_echonet_train_window_feeds_the_on_device_frame_jitter(echo_root):
  """``video.sample_clip(key, window, frames, period=1)`` = raw frames ``period * (s + k)``."""
  import jax  # pylint: disable=g-import-not-at-top
  from contrastive_jax.data import video  # pylint: disable=g-import-not-at-top
  ds = echonet.load_echonet(echo_root, frames=3, period=2, size=16, train_window=6)
  window = ds.train.x[0]  # video 0 has 12 raw frames: the window is raw frames 0, 2, ..., 10
  starts = set()
  for seed in range(6):
    clip = np.asarray(video.sample_clip(jax.random.key(seed), window, 3, period=1))
    values = clip[:, :, :8].mean(axis=(1, 2, 3)) * 255.0
    start = int(np.argmin([np.abs(values - _expected_clip_values(12, 6, 2)[s:s + 3]).max()
                           for s in range(4)]))
    np.testing.assert_allclose(values, _expected_clip_values(12, 6, 2)[start:start + 3], atol=3)
    starts.add(start)
  assert len(starts) > 1  # the start is jittered


def test_echonet_target_column_and_registry(echo_root):
  assert sources.get_loader('echonet') is echonet.load_echonet
  ds = echonet.load_echonet(echo_root, frames=2, period=3, size=16, target='ESV')
  np.testing.assert_array_equal(ds.test.y, np.float32([26.0, 27.0]))
  assert ds.train.x.shape == (4, 4, 16, 16, 3)  # default train_window = 2 * frames


def test_echonet_shards_across_two_processes(echo_root):
  ds = echonet.load_echonet(echo_root, frames=2, period=2, size=16)
  _check_two_process_sharding(ds.train, global_batch_size=2)
  _check_two_process_sharding(ds.val, global_batch_size=2)


def test_echonet_missing_files(tmp_path, echo_root):
  with pytest.raises(FileNotFoundError, match='FileList.csv'):
    echonet.load_echonet(str(tmp_path))
  root = _make_echonet(str(tmp_path / 'gone'), rows=_ECHO_ROWS[:2] + _ECHO_ROWS[4:])
  os.remove(os.path.join(root, 'Videos', '0X0001.avi'))
  with pytest.raises(FileNotFoundError, match='0X0001.avi'):
    echonet.load_echonet(root)


def test_echonet_corrupt_and_truncated_videos(tmp_path):
  root = _make_echonet(str(tmp_path), rows=_ECHO_ROWS[:2] + _ECHO_ROWS[4:],
                       overrides={1: {'NumberOfFrames': 40}})
  with open(os.path.join(root, 'Videos', '0X0000.avi'), 'wb') as f:
    f.write(b'not a video' * 20)
  with pytest.raises(ValueError, match=r"'echonet', train split: .*0X0000\.avi"):
    echonet.load_echonet(root, frames=4, period=4, size=16)
  ds = echonet.load_echonet(root, frames=4, period=4, size=16, check_files=False)
  with pytest.raises(ValueError, match='0X0000.avi'):
    ds.train.x[0]
  with pytest.raises(ValueError, match=r'0X0001\.avi.*NumberOfFrames = 40'):
    ds.train.x[1]


def test_echonet_truncated_test_video_fails_the_load(tmp_path):
  """issue 16 item 17: the val / test clips are decoded when loading, so a truncated test video
  fails before training, named with its split (a training video is only opened there)."""
  root = _make_echonet(str(tmp_path), rows=_ECHO_ROWS[:2] + _ECHO_ROWS[4:])
  path = os.path.join(root, 'Videos', '0X0004.avi')  # rows 4, 5 (of the 6 written) are TEST
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"'echonet', test split: .*0X0004\.avi"):
    echonet.load_echonet(root, frames=4, period=2, size=16)


def test_echonet_inconsistent_frame_size(tmp_path):
  root = _make_echonet(str(tmp_path), rows=_ECHO_ROWS[4:] + [('TRAIN', 4)],
                       overrides={4: {'FrameHeight': 24}})
  ds = echonet.load_echonet(root, frames=2, size=16)
  with pytest.raises(ValueError, match=r'0X0004\.avi.*FrameHeight'):
    ds.train.x[0]


@pytest.mark.parametrize('bad', ['nan', 'inf', '-inf'])
def test_echonet_non_finite_targets(tmp_path, bad):
  ef = [50.0] * len(_ECHO_ROWS)
  ef[5] = bad
  root = _make_echonet(str(tmp_path), ef=ef)
  with pytest.raises(ValueError, match=r'non-finite.*0X0005\.avi'):
    echonet.load_echonet(root)


def test_echonet_empty_split_and_bad_split_value(tmp_path):
  root = _make_echonet(str(tmp_path / 'a'), rows=_ECHO_ROWS[:6])
  with pytest.raises(ValueError, match='test split is empty'):
    echonet.load_echonet(root)
  root = _make_echonet(str(tmp_path / 'b'), overrides={2: {'Split': 'HOLDOUT'}})
  with pytest.raises(ValueError, match="line 4: Split = 'HOLDOUT'"):
    echonet.load_echonet(root)


def test_echonet_bad_arguments(echo_root):
  with pytest.raises(ValueError, match='train_window'):
    echonet.load_echonet(echo_root, frames=4, train_window=3)
  with pytest.raises(ValueError, match='frames'):
    echonet.load_echonet(echo_root, frames=0)
  with pytest.raises(ValueError, match='target'):
    echonet.load_echonet(echo_root, target='LVEF')


# --------------------------------------------------------------------------------------------------
# MRNet: {train,valid}/<plane>/NNNN.npy + {train,valid}-<task>.csv
# --------------------------------------------------------------------------------------------------

_MR_SIDE = 8
_MR_TRAIN_LABELS = [0, 1, 0, 0, 1, 1, 0, 0, 0, 1]
_MR_VALID_LABELS = [1, 0, 0, 1]


def _make_mrnet(root, train_labels=_MR_TRAIN_LABELS, valid_labels=_MR_VALID_LABELS):
  """Random uint8 volumes with 5..8 slices; train ids 0000.., valid ids 1130.. (as in MRNet)."""
  rng = np.random.default_rng(0)
  volumes = {}
  for part, labels, first in (('train', train_labels, 0), ('valid', valid_labels, 1130)):
    for plane in mrnet.PLANES:
      os.makedirs(os.path.join(root, part, plane), exist_ok=True)
    rows = []
    for k, label in enumerate(labels):
      exam = f'{first + k:04d}'
      for plane in mrnet.PLANES:
        volume = rng.integers(0, 256, (5 + (first + k) % 4, _MR_SIDE, _MR_SIDE), dtype=np.uint8)
        np.save(os.path.join(root, part, plane, exam + '.npy'), volume)
        volumes[(part, plane, exam)] = volume
      rows.append(f'{exam},{label}')
    for task in mrnet.TASKS:
      with open(os.path.join(root, f'{part}-{task}.csv'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
  return volumes


@pytest.fixture(scope='module')
def mr_fixture(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mrnet'))
  return root, _make_mrnet(root)


def _nearest_slices(num_slices: int, slices: int) -> np.ndarray:
  """Reference: the original slice nearest to position j (S - 1) / (slices - 1); ties go up."""
  if slices == 1:
    return np.array([num_slices // 2])
  positions = np.arange(slices) * (num_slices - 1) / (slices - 1)
  return np.array([np.argmin(np.abs(np.arange(num_slices) - p - 1e-9)) for p in positions])


@pytest.mark.parametrize('slices', [1, 4, 11])
def test_mrnet_volumes_are_resampled_nearest_slices(mr_fixture, slices):
  root, volumes = mr_fixture
  ds = mrnet.load_mrnet(root, task='acl', plane='coronal', slices=slices, size=_MR_SIDE,
                        val_fraction=0.2)
  assert ds.kind == 'volume'
  assert ds.test.x.shape == (4, slices, _MR_SIDE, _MR_SIDE, 1) and ds.test.x.dtype == np.uint8
  np.testing.assert_array_equal(ds.test.y, np.float32(_MR_VALID_LABELS))
  decoded = ds.test.x[:]
  for k in range(4):
    volume = volumes[('valid', 'coronal', f'{1130 + k:04d}')]
    np.testing.assert_array_equal(decoded[k, ..., 0],
                                  volume[_nearest_slices(len(volume), slices)])


def test_mrnet_splits(mr_fixture):
  root, _ = mr_fixture
  ds = mrnet.load_mrnet(root, seed=3, slices=2, size=_MR_SIDE, val_fraction=0.2)
  assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
  # Stratified: one exam of each label held out (6 zeros, 4 ones -> round(1.2), round(0.8)).
  assert sorted(ds.val.y.tolist()) == [0.0, 1.0]
  assert sorted(ds.train.y.tolist() + ds.val.y.tolist()) == sorted(map(float, _MR_TRAIN_LABELS))
  other = mrnet.load_mrnet(root, seed=3, slices=2, size=_MR_SIDE, val_fraction=0.2)
  np.testing.assert_array_equal(other.val.x[:], ds.val.x[:])
  assert sources.get_loader('mrnet') is mrnet.load_mrnet


def test_mrnet_shards_across_two_processes(mr_fixture):
  root, _ = mr_fixture
  ds = mrnet.load_mrnet(root, task='meniscus', plane='axial', slices=2, size=_MR_SIDE,
                        val_fraction=0.2)
  _check_two_process_sharding(ds.train, global_batch_size=4)
  _check_two_process_sharding(ds.test, global_batch_size=2)


def test_mrnet_missing_and_corrupt_files(tmp_path):
  root = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='train-acl.csv'):
    mrnet.load_mrnet(root)
  _make_mrnet(root)
  os.remove(os.path.join(root, 'train', 'sagittal', '0004.npy'))
  with pytest.raises(FileNotFoundError, match='0004.npy'):
    mrnet.load_mrnet(root, size=_MR_SIDE)
  with open(os.path.join(root, 'train', 'axial', '0002.npy'), 'wb') as f:
    f.write(b'garbage' * 10)
  np.save(os.path.join(root, 'train', 'axial', '0003.npy'), np.zeros((6, 8, 5), np.uint8))
  with pytest.raises(ValueError, match=r"'mrnet', (train|val) split: .*000[23]\.npy"):
    mrnet.load_mrnet(root, plane='axial', size=_MR_SIDE, slices=2, val_fraction=0.1, seed=0)
  ds = mrnet.load_mrnet(root, plane='axial', size=_MR_SIDE, slices=2, val_fraction=0.1, seed=0,
                        check_files=False)
  names = [ds.train.x.name(i) for i in range(len(ds.train))]
  corrupt = [i for i, n in enumerate(names) if n.endswith('0002.npy')]
  narrow = [i for i, n in enumerate(names) if n.endswith('0003.npy')]
  assert corrupt and narrow
  with pytest.raises(ValueError, match='0002.npy'):
    ds.train.x[corrupt[0]]
  with pytest.raises(ValueError, match=r'0003\.npy.*8x5'):
    ds.train.x[narrow[0]]


def test_mrnet_truncated_test_volume_fails_the_load(tmp_path):
  """issue 16 item 17: a truncated volume of the test split (MRNet's valid/) fails the load."""
  root = str(tmp_path)
  _make_mrnet(root)
  path = sorted(glob.glob(os.path.join(root, 'valid', 'sagittal', '*.npy')))[0]
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) - 100])
  with pytest.raises(ValueError, match=r"'mrnet', test split: Cannot decode .*"
                                       + re.escape(os.path.basename(path))):
    mrnet.load_mrnet(root, size=_MR_SIDE)


@pytest.mark.parametrize('bad', ['nan', 'inf', '2'])
def test_mrnet_bad_labels(tmp_path, bad):
  root = str(tmp_path)
  _make_mrnet(root)
  lines = open(os.path.join(root, 'train-acl.csv')).read().splitlines()
  lines[3] = f'0003,{bad}'
  with open(os.path.join(root, 'train-acl.csv'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match=r'train-acl\.csv.*0003\.npy'):
    mrnet.load_mrnet(root, size=_MR_SIDE)


def test_mrnet_empty_split_and_bad_arguments(tmp_path):
  root = str(tmp_path)
  _make_mrnet(root)
  with pytest.raises(ValueError, match='task'):
    mrnet.load_mrnet(root, task='tear')
  with pytest.raises(ValueError, match='plane'):
    mrnet.load_mrnet(root, plane='oblique')
  two = str(tmp_path / 'two')
  _make_mrnet(two, train_labels=[0, 1])  # one exam per label: nothing can be held out
  with pytest.raises(ValueError, match='val split empty'):
    mrnet.load_mrnet(two, size=_MR_SIDE, val_fraction=0.2)
  open(os.path.join(root, 'valid-acl.csv'), 'w').close()
  with pytest.raises(ValueError, match=r'valid-acl\.csv: no rows'):
    mrnet.load_mrnet(root, size=_MR_SIDE)


# --------------------------------------------------------------------------------------------------
# CHAOS MR: Train_Sets/MR/<id>/T2SPIR/{DICOM_anon/*.dcm, Ground/*.png}
# --------------------------------------------------------------------------------------------------

_CH_SIDE = 12
_CH_PATIENTS = {'1': 3, '2': 4, '5': 3, '10': 2}  # patient id -> slices


def _write_dicom(path: str, pixels: np.ndarray, instance: int):
  from pydicom import dataset, uid  # pylint: disable=g-import-not-at-top
  meta = dataset.FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.MRImageStorage
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = dataset.FileDataset(path, {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID = uid.MRImageStorage
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.Modality = 'MR'
  ds.InstanceNumber = instance
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = 'MONOCHROME2'
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
  ds.PixelData = pixels.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def _write_png(path: str, grey: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(grey.astype(np.uint8), mode='L').save(path)


def _make_chaos(root, patients=_CH_PATIENTS, side=_CH_SIDE):
  """Random 12-bit slices; masks with one square per organ at the CHAOS grey values."""
  rng = np.random.default_rng(1)
  data = {}
  for p, (patient, count) in enumerate(patients.items()):
    seq = os.path.join(root, 'Train_Sets', 'MR', patient, 'T2SPIR')
    os.makedirs(os.path.join(seq, 'DICOM_anon'))
    os.makedirs(os.path.join(seq, 'Ground'))
    images, masks = [], []
    for k in range(count):
      stem = f'IMG-{p + 1:04d}-{k + 1:05d}'
      pixels = rng.integers(0, 200 + 300 * p, (side, side))
      grey = np.zeros((side, side), np.uint8)
      for organ, value in enumerate((63, 126, 189, 252)):
        if (k + organ) % 2 == 0:
          grey[2 * organ:2 * organ + 3, 1 + k:4 + k] = value
      _write_dicom(os.path.join(seq, 'DICOM_anon', stem + '.dcm'), pixels, k + 1)
      _write_png(os.path.join(seq, 'Ground', stem + '.png'), grey)
      images.append(pixels)
      masks.append(grey)
    data[patient] = (np.stack(images), np.stack(masks))
  return data


@pytest.fixture(scope='module')
def chaos_fixture(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('chaos'))
  return root, _make_chaos(root)


def _reference_slices(scan: np.ndarray) -> np.ndarray:
  """Per-scan clip to [min, 99.5th percentile], scaled to [0, 255], rounded (float64)."""
  scan = scan.astype(np.float64)
  low, high = scan.min(), np.percentile(scan, 99.5)
  return np.round((np.clip(scan, low, high) - low) / (high - low) * 255.0)


def _reference_labels(grey: np.ndarray) -> np.ndarray:
  lookup = np.zeros(256)
  lookup[[63, 126, 189, 252]] = [1, 2, 3, 4]
  return lookup[grey]


def test_chaos_slices_masks_and_patient_split(chaos_fixture):
  root, data = chaos_fixture
  assert sources.get_loader('chaos') is chaos.load_chaos
  scans = chaos.find_scans(root)
  assert [s.patient for s in scans] == ['1', '2', '5', '10']
  ds = chaos.load_chaos(root, seed=0, size=_CH_SIDE)
  parts = chaos.patient_split([s.patient for s in scans], seed=0)
  assert sorted(sum(parts, [])) == sorted(_CH_PATIENTS)  # each patient in exactly one split
  for split, patients in zip((ds.train, ds.val, ds.test), parts):
    images = np.concatenate([data[p][0] for p in patients])
    assert split.x.shape == (len(images), _CH_SIDE, _CH_SIDE, 1) and split.x.dtype == np.uint8
    assert split.y.shape == (len(images), _CH_SIDE, _CH_SIDE) and split.y.dtype == np.float32
    expected_x = np.concatenate([_reference_slices(data[p][0]) for p in patients])
    expected_y = np.concatenate([_reference_labels(data[p][1]) for p in patients])
    np.testing.assert_allclose(split.x[:][..., 0].astype(np.float64), expected_x, atol=1)
    np.testing.assert_array_equal(split.y[:], expected_y)


def test_chaos_resizes_slices_and_masks(chaos_fixture):
  root, _ = chaos_fixture
  ds = chaos.load_chaos(root, seed=1, size=6)
  assert ds.train.x.shape[1:] == (6, 6, 1) and ds.train.y.shape[1:] == (6, 6)
  assert set(np.unique(ds.train.y[:])) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_chaos_shards_across_two_processes(chaos_fixture):
  root, _ = chaos_fixture
  ds = chaos.load_chaos(root, seed=0, size=_CH_SIDE)
  split = ds.train if len(ds.train) % 2 == 0 else ds.val
  _check_two_process_sharding(split, global_batch_size=2)
  labels = np.asarray(split.y)
  batch = pipeline.train_batch(split, 2, seed=0, step=0, process_index=1, process_count=2)
  assert batch['y'].shape == (1, _CH_SIDE, _CH_SIDE)
  row = _row_ids(batch['x'], np.asarray(split.x))[0]
  np.testing.assert_array_equal(batch['y'][0], labels[row])


def test_chaos_missing_corrupt_and_inconsistent_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='CHAOS'):
    chaos.load_chaos(str(tmp_path / 'nowhere'))
  root = str(tmp_path)
  _make_chaos(root)
  ground = os.path.join(root, 'Train_Sets', 'MR', '2', 'T2SPIR', 'Ground')
  os.remove(os.path.join(ground, 'IMG-0002-00003.png'))
  with pytest.raises(FileNotFoundError, match='IMG-0002-00003.png'):
    chaos.load_chaos(root)
  _write_png(os.path.join(ground, 'IMG-0002-00003.png'), np.full((_CH_SIDE, _CH_SIDE), 100))
  _write_png(os.path.join(ground, 'IMG-0002-00002.png'), np.zeros((_CH_SIDE, _CH_SIDE + 2)))
  dicom = os.path.join(root, 'Train_Sets', 'MR', '2', 'T2SPIR', 'DICOM_anon', 'IMG-0002-00004.dcm')
  with open(dicom, 'wb') as f:
    f.write(b'garbage' * 30)
  ds = chaos.load_chaos(root, size=_CH_SIDE)
  split = next(s for s in (ds.train, ds.val, ds.test)
               if any('IMG-0002' in s.x.name(i) for i in range(len(s))))
  row = {os.path.basename(split.x.name(i)): i for i in range(len(split))}
  with pytest.raises(ValueError, match=r'IMG-0002-00003\.png.*100'):
    split.y[row['IMG-0002-00003.dcm']]
  with pytest.raises(ValueError, match=r'IMG-0002-00002\.png.*shape'):
    split.y[row['IMG-0002-00002.dcm']]
  with pytest.raises(ValueError, match=r'IMG-0002-00004\.dcm'):
    split.x[row['IMG-0002-00001.dcm']]  # the scan's intensity range needs every slice


def test_chaos_too_few_patients_and_bad_size(tmp_path):
  root = str(tmp_path)
  _make_chaos(root, patients={'1': 2, '2': 2})
  with pytest.raises(ValueError, match='at least 3'):
    chaos.load_chaos(root)
  with pytest.raises(ValueError, match='size'):
    chaos.load_chaos(root, size=0)
