r"""Host input pipelines side by side: images per second for the same files and the same output.

    python benchmarks/input_pipeline.py --json input_pipeline.json
    python benchmarks/input_pipeline.py --quick            # seconds, tiny images (the CI smoke test)

Writes ``--num-images`` JPEGs (quality 90) of ``--image-hw`` pixels, random crops of scikit-learn's
two sample photos (``sklearn.datasets.load_sample_images``, 427 x 640), to a temporary folder, reads
each once (page cache warm), and times every pipeline delivering batches of ``--batch`` uint8
``[size, size, 3]`` images (the trainer's input since the device does the 1/255 scaling):

* ``project``: ``data.sources.csv_images.load_csv_images(image_size=size, channels=3,
  workers=w)`` + ``data.pipeline.train_batch(..., scale=False)``, workers ``--workers``; and the same
  through the background producer ``data.prefetch.Prefetcher`` (depth 2), as the trainer runs it.
* ``project full-image crop``: ``train_batch(..., crop=pipeline.HostCrop(...))`` with two views,
  SimCLR's random-resized crop taken on the host from the whole file (``data.crop_from='full'``):
  two ``[size, size, 3]`` crops per image.
* ``grain``: ``grain.DataLoader`` (``IndexSampler`` with shuffling, ``Batch``) and
  ``grain.MapDataset`` (``shuffle -> map -> batch``, one read thread, ``mp_prefetch`` for workers >
  0), worker_count ``--grain-workers``, and ``MapDataset`` with 2 read threads (no processes), mapping the project's own decoder (``images.ImageDecoder``: PIL decode, one
  centre crop + RGB bilinear resize), so the output is the same function of the same file.
* ``torch``: ``torch.utils.data.DataLoader`` over the same decoder, ``num_workers``
  ``--torch-workers`` (skipped, with a note, when torch is not importable).
* ``PIL decode alone`` (one thread: the floor of any pipeline that decodes every file in full) and
  ``decode + fit_image`` (one thread: the per-image cost of the transform itself).

The same-output check: every pipeline's batch is uint8 ``[batch, size, size, 3]``, and grain's
batch of the rows ``0 .. batch-1`` is the project's, pixel for pixel. Each row is the median of
``--reps`` timed runs of ``--steps`` batches after four warm-up batches (thread pools, worker
processes, read-ahead buffers). ``img/s/core`` divides by the cores the pipeline can use, ``min(max(workers, 1),
cpu_count)`` (the prefetcher's producer thread counts as none: it waits for the decode threads).
Prints a markdown table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=wrong-import-position

from contrastive_jax.data import pipeline  # pylint: disable=wrong-import-position
from contrastive_jax.data.prefetch import Prefetcher  # pylint: disable=wrong-import-position
from contrastive_jax.data.sources import csv_images  # pylint: disable=wrong-import-position
from contrastive_jax.data.sources import images  # pylint: disable=wrong-import-position


def write_jpegs(folder: str, num: int, hw: tuple[int, int], seed: int = 0) -> list[str]:
  """``num`` JPEGs of ``hw`` = (height, width) pixels: random crops of the two sklearn photos."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  rng = np.random.default_rng(seed)
  h, w = hw
  paths = []
  for i in range(num):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - h + 1))
    left = int(rng.integers(0, photo.shape[1] - w + 1))
    path = os.path.join(folder, f"img{i:05d}.jpg")
    Image.fromarray(photo[top:top + h, left:left + w]).save(path, quality=90)
    paths.append(path)
  return paths


def write_csv(folder: str, paths: list[str]) -> str:
  """``path,label,split``: every file in train, plus files 0 and 1 again as val / test."""
  csv_path = os.path.join(folder, "data.csv")
  with open(csv_path, "w", encoding="utf-8") as f:
    f.write("path,label,split\n")
    for i, p in enumerate(paths):
      f.write(f"{os.path.basename(p)},{i % 7},train\n")
    f.write(f"{os.path.basename(paths[0])},0,val\n{os.path.basename(paths[1])},1,test\n")
  return csv_path


WARMUP = 4  # batches consumed before timing: >= any pipeline's read-ahead (grain's 2 x batch)


def time_batches(next_batch, steps: int, reps: int) -> tuple[float, object]:
  """Median seconds of ``steps`` calls ``next_batch(i)``, and a batch. The first ``WARMUP`` calls
  (pools, worker processes, read-ahead buffers) are not timed; the reps follow each other without a
  pause, so no buffer refills between them: each window measures the steady rate."""
  first = next_batch(0)
  for i in range(1, WARMUP):
    next_batch(i)
  times = []
  for r in range(reps):
    start = time.perf_counter()
    for i in range(steps):
      next_batch(WARMUP + r * steps + i)
    times.append(time.perf_counter() - start)
  return statistics.median(times), first


def project_rows(csv_path, args, size, workers, prefetch: bool):
  ds = csv_images.load_csv_images(csv_path, image_size=size, channels=3, workers=workers,
                                  check_files=False)
  split = ds.train
  make = lambda s: pipeline.train_batch(split, args.batch, 0, s, scale=False)
  if not prefetch:
    return time_batches(lambda s: make(s)["x"], args.steps, args.reps)
  total = WARMUP + args.steps * args.reps
  with Prefetcher(make, 0, total, depth=2) as producer:
    return time_batches(lambda s: producer.get(s)["x"], args.steps, args.reps)


def crop_row(csv_path, args, size, workers):
  ds = csv_images.load_csv_images(csv_path, image_size=size, channels=3, workers=workers,
                                  check_files=False)
  crop = pipeline.HostCrop(size=(size, size), views=2)
  make = lambda s: pipeline.train_batch(ds.train, args.batch, 0, s, scale=False, crop=crop)["x"]
  return time_batches(make, args.steps, args.reps)


def grain_loader(paths, decoder, batch, workers, seed=0, shuffle=True):
  import grain  # pylint: disable=g-import-not-at-top
  sampler = grain.samplers.IndexSampler(len(paths), shuffle=shuffle, seed=seed, num_epochs=None)

  class Decode(grain.transforms.Map):
    def map(self, path):
      return decoder(path)

  return grain.DataLoader(data_source=list(paths), sampler=sampler, worker_count=workers,
                          operations=[Decode(), grain.transforms.Batch(batch, drop_remainder=True)])


def grain_map_dataset(paths, decoder, batch, workers, threads=1, seed=0):
  """``shuffle -> map(decode) -> batch``; ``threads`` read threads (they run the map), read-ahead of
  two batches; ``workers`` > 0: ``mp_prefetch`` over that many processes."""
  import grain  # pylint: disable=g-import-not-at-top
  ds = grain.MapDataset.source(list(paths)).shuffle(seed=seed).repeat().map(decoder)
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * batch)
  ds = ds.batch(batch, drop_remainder=True).to_iter_dataset(options)
  if workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return ds


def iterator_rows(iterable, args):
  it = iter(iterable)
  return time_batches(lambda _: np.asarray(next(it)), args.steps, args.reps)


def torch_loader(paths, decoder, batch, workers):
  import torch  # pylint: disable=g-import-not-at-top

  class Files(torch.utils.data.Dataset):
    def __len__(self):
      return len(paths)

    def __getitem__(self, i):
      return decoder(paths[i])

  collate = lambda items: np.stack(items)
  sampler = torch.utils.data.RandomSampler(Files(), replacement=True, num_samples=10 ** 9)
  return torch.utils.data.DataLoader(Files(), batch_size=batch, sampler=sampler, drop_last=True,
                                     num_workers=workers, collate_fn=collate,
                                     persistent_workers=workers > 0)


def one_thread(paths, fn, count):
  def run(_):
    for p in paths[:count]:
      fn(p)
  start = time.perf_counter()
  run(0)
  return time.perf_counter() - start


def pil_decode(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    image.load()
    return image


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-images", type=int, default=1024)
  parser.add_argument("--image-hw", default="390,400", help="HEIGHT,WIDTH of the generated JPEGs")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=16, help="timed batches per rep")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--workers", default="1,2,4", help="project decode threads")
  parser.add_argument("--grain-workers", default="0,2")
  parser.add_argument("--torch-workers", default="0,2")
  parser.add_argument("--quick", action="store_true",
                      help="16 tiny images, batch 4, size 32, one rep (a smoke test)")
  parser.add_argument("--dir", default=None, help="folder for the JPEGs (default: a temp dir)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  if args.quick:
    args.num_images, args.image_hw, args.batch, args.size = 16, "48,40", 4, 32
    args.steps, args.reps, args.workers = 2, 1, "1,2"
  hw = tuple(int(v) for v in args.image_hw.split(","))
  cores = os.cpu_count() or 1
  rows, notes = [], []

  def add(name, workers, seconds, images_per_batch=None, status="ok", batch=None):
    n = args.steps * (images_per_batch or args.batch)
    ips = n / seconds if seconds else None
    used = min(max(workers, 1), cores)
    rows.append({"pipeline": name, "workers": workers, "status": status,
                 "img_per_s": ips, "img_per_s_per_core": ips / used if ips else None,
                 "shape": list(batch.shape) if batch is not None else None,
                 "dtype": str(batch.dtype) if batch is not None else None})

  with tempfile.TemporaryDirectory() as tmp:
    folder = args.dir or tmp
    os.makedirs(folder, exist_ok=True)
    paths = write_jpegs(folder, args.num_images, hw)
    csv_path = write_csv(folder, paths)
    for p in paths:  # page cache warm
      with open(p, "rb") as f:
        f.read()
    decoder = images.ImageDecoder(args.size, 3, "crop")
    reference = csv_images.load_csv_images(csv_path, image_size=args.size, channels=3,
                                           check_files=False).train.x[np.arange(args.batch)]
    expected = (args.batch, args.size, args.size, 3)

    for w in (int(v) for v in args.workers.split(",")):
      for prefetch in (False, True):
        seconds, batch = project_rows(csv_path, args, args.size, w, prefetch)
        add("project" + (" + prefetch" if prefetch else ""), w, seconds, batch=batch)
    crop_workers = max(int(v) for v in args.workers.split(","))
    seconds, batch = crop_row(csv_path, args, args.size, min(crop_workers, 2))
    add("project full-image crop, 2 views", min(crop_workers, 2), seconds, batch=batch)

    try:
      import grain  # pylint: disable=g-import-not-at-top,unused-import
      from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
      if not absl_flags.FLAGS.is_parsed():  # grain's workers read absl flags
        absl_flags.FLAGS.mark_as_parsed()
      have_grain = True
    except ImportError:
      have_grain = False
      notes.append("grain is not installed (pip install grain): its rows are skipped.")
    if have_grain:
      same = np.asarray(next(iter(grain_loader(paths, decoder, args.batch, 0, shuffle=False))))
      if not np.array_equal(same, reference):
        raise AssertionError("grain's batch of rows 0..batch-1 differs from the project's.")
      for w in (int(v) for v in args.grain_workers.split(",")):
        seconds, batch = iterator_rows(grain_loader(paths, decoder, args.batch, w), args)
        add("grain DataLoader", w, seconds, batch=batch)
        seconds, batch = iterator_rows(grain_map_dataset(paths, decoder, args.batch, w), args)
        add("grain MapDataset", w, seconds, batch=batch)
      seconds, batch = iterator_rows(grain_map_dataset(paths, decoder, args.batch, 0, threads=2),
                                     args)
      add("grain MapDataset, 2 read threads", 2, seconds, batch=batch)

    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      have_torch = True
    except ImportError:
      have_torch = False
      notes.append("torch is not installed: the torch DataLoader rows are skipped.")
    if have_torch:
      for w in (int(v) for v in args.torch_workers.split(",")):
        seconds, batch = iterator_rows(torch_loader(paths, decoder, args.batch, w), args)
        add("torch DataLoader", w, seconds, batch=batch)

    count = min(len(paths), args.steps * args.batch)
    floor = statistics.median(one_thread(paths, pil_decode, count) for _ in range(args.reps))
    add("PIL decode alone, one thread", 1, floor * args.steps * args.batch / count)
    transform = statistics.median(one_thread(paths, decoder, count) for _ in range(args.reps))
    add("decode + fit_image, one thread", 1, transform * args.steps * args.batch / count)

  for row in rows:
    if row["shape"] is None:
      continue
    want = (args.batch, 2) + expected[1:] if "2 views" in row["pipeline"] else expected
    if tuple(row["shape"]) != want or row["dtype"] != "uint8":
      raise AssertionError(f"{row['pipeline']}: batch {row['shape']} {row['dtype']}, expected "
                           f"{want} uint8.")
  print(f"{args.num_images} JPEGs {hw[0]}x{hw[1]} -> batch {args.batch} uint8 "
        f"{args.size}x{args.size}x3; {cores} cores; median of {args.reps} x {args.steps} batches\n")
  print("| pipeline | workers | img/s | img/s/core |\n|---|---:|---:|---:|")
  for r in rows:
    print(f"| {r['pipeline']} | {r['workers']} | {r['img_per_s']:,.0f} | "
          f"{r['img_per_s_per_core']:,.0f} |")
  for note in notes:
    print("note:", note)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"rows": rows, "notes": notes, "cpu_count": cores, "args": vars(args),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
