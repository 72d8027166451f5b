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
* ``--crop-costs``: CPU ms per image (one thread) of the decode paths on JPEGs of the sizes given:
  the default decoder, the same with ``draft=True``, and the full-image crop of two views with and
  without ``Image.draft`` (the cost of ``data.crop_from='full'``).

The same-output check: every pipeline's batch is uint8 ``[batch, size, size, 3]``, and grain's
batch of the rows ``0 .. batch-1`` is the project's, pixel for pixel. Each row is the median of
``--reps`` timed runs of ``--steps`` batches after four warm-up batches (thread pools, worker
processes, read-ahead buffers). ``img/s`` is wall-clock; ``img/s/core`` is images per CPU-second
the pipeline consumed (user + system time of this process and its worker processes, by psutil),
i.e. the rate of one fully used core: unlike img/s it hardly moves when other jobs share the
machine. Prints a markdown table and writes ``--json``.
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


def cpu_seconds() -> float:
  """CPU time (user + system) of this process and its live child processes (grain's / torch's
  workers); without psutil, this process and its reaped children only."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
  except ImportError:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
  me = psutil.Process()
  total = time.process_time()  # this process, all threads, in ns (psutil's ticks are 10 ms)
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def time_batches(next_batch, steps: int, reps: int) -> tuple[float, float, object]:
  """Median wall seconds and median CPU seconds of ``steps`` calls ``next_batch(i)``, and a batch.
  The first ``WARMUP`` calls (pools, worker processes, read-ahead buffers) are not timed; the reps
  follow each other without a pause, so no buffer refills between them: each window measures the
  steady rate."""
  first = next_batch(0)
  for i in range(1, WARMUP):
    next_batch(i)
  times, cpus = [], []
  for r in range(reps):
    cpu, start = cpu_seconds(), time.perf_counter()
    for i in range(steps):
      next_batch(WARMUP + r * steps + i)
    times.append(time.perf_counter() - start)
    cpus.append(cpu_seconds() - cpu)
  return statistics.median(times), statistics.median(cpus), first


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


def one_thread(paths, fn, count) -> tuple[float, float]:
  """Wall and CPU seconds of ``fn`` over the first ``count`` files, in this thread."""
  cpu, start = cpu_seconds(), time.perf_counter()
  for p in paths[:count]:
    fn(p)
  return time.perf_counter() - start, cpu_seconds() - cpu


def pil_decode(path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    image.load()
    return image


def crop_costs(folder: str, hws, num: int, size: int, reps: int) -> list[dict]:
  """CPU ms per image, one thread, of the decode paths on JPEGs of each ``(height, width)`` in
  ``hws``: the default decoder (centre crop + resize), with ``draft=True``, and the full-image
  random-resized crop of two views (``images.random_crops``) with and without ``Image.draft``.
  Files larger than the sample photos are upscaled crops (bicubic)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def per_image(fn, paths):
    runs = []
    for _ in range(reps):
      start = time.process_time()
      for i, p in enumerate(paths):
        fn(p, i)
      runs.append((time.process_time() - start) / len(paths))
    return 1e3 * statistics.median(runs)

  out = []
  for hw in hws:
    sub = os.path.join(folder, f"cost{hw[0]}x{hw[1]}")
    os.makedirs(sub, exist_ok=True)
    paths = write_jpegs(sub, num, (min(hw[0], 390), min(hw[1], 400)), seed=1)
    if tuple(hw) != (min(hw[0], 390), min(hw[1], 400)):
      for p in paths:
        Image.open(p).resize(tuple(hw[::-1]), Image.BICUBIC).save(p, quality=90)
    for p in paths:  # page cache warm
      images.ImageDecoder(size, 3)(p)
    rng = lambda i: np.random.default_rng([0, i])
    plain, drafted = images.ImageDecoder(size, 3), images.ImageDecoder(size, 3, draft=True)
    out.append({
        "image_hw": list(hw),
        "decoded_ms": per_image(lambda p, i: plain(p), paths),
        "decoded_draft_ms": per_image(lambda p, i: drafted(p), paths),
        "full_crop_2_views_ms": per_image(lambda p, i: images.random_crops(p, rng(i), size, 2),
                                          paths),
        "full_crop_2_views_no_draft_ms": per_image(
            lambda p, i: images.random_crops(p, rng(i), size, 2, draft=False), paths)})
  return out


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
  parser.add_argument("--crop-costs", default="390x400,1200x1600",
                      help="HxW,... of JPEGs for the per-image CPU cost of the decode paths "
                           "('' skips it)")
  parser.add_argument("--crop-cost-images", type=int, default=64)
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  if args.quick:
    args.num_images, args.image_hw, args.batch, args.size = 16, "48,40", 4, 32
    args.steps, args.reps, args.workers = 2, 1, "1,2"
    args.crop_costs, args.crop_cost_images = "48x40,96x80", 4
  hw = tuple(int(v) for v in args.image_hw.split(","))
  cores = os.cpu_count() or 1
  rows, notes = [], []

  def add(name, workers, timing):
    seconds, cpu = timing[:2]
    batch = timing[2] if len(timing) > 2 else None
    n = args.steps * args.batch
    rows.append({"pipeline": name, "workers": workers, "img_per_s": n / seconds,
                 "img_per_cpu_s": n / cpu if cpu > 0 else None, "cpu_ms_per_img": 1e3 * cpu / n,
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
        add("project" + (" + prefetch" if prefetch else ""), w,
            project_rows(csv_path, args, args.size, w, prefetch))
    crop_workers = max(int(v) for v in args.workers.split(","))
    add("project full-image crop, 2 views", min(crop_workers, 2),
        crop_row(csv_path, args, args.size, min(crop_workers, 2)))

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
        add("grain DataLoader", w, iterator_rows(grain_loader(paths, decoder, args.batch, w), args))
        add("grain MapDataset", w,
            iterator_rows(grain_map_dataset(paths, decoder, args.batch, w), args))
      add("grain MapDataset, 2 read threads", 2,
          iterator_rows(grain_map_dataset(paths, decoder, args.batch, 0, threads=2), args))

    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
      have_torch = True
    except ImportError:
      have_torch = False
      notes.append("torch is not installed: the torch DataLoader rows are skipped.")
    if have_torch:
      for w in (int(v) for v in args.torch_workers.split(",")):
        add("torch DataLoader", w, iterator_rows(torch_loader(paths, decoder, args.batch, w), args))

    count = min(len(paths), args.steps * args.batch)
    for name, fn in (("PIL decode alone, one thread", pil_decode),
                     ("decode + fit_image, one thread", decoder)):
      runs = [one_thread(paths, fn, count) for _ in range(args.reps)]
      scale = args.steps * args.batch / count
      add(name, 1, (statistics.median(r[0] for r in runs) * scale,
                    statistics.median(r[1] for r in runs) * scale))

    costs = []
    if args.crop_costs:
      hws = [tuple(int(v) for v in hw.split("x")) for hw in args.crop_costs.split(",")]
      costs = crop_costs(folder, hws, args.crop_cost_images, args.size, args.reps)

  for row in rows:
    if row["shape"] is None:
      continue
    want = (args.batch, 2) + expected[1:] if "2 views" in row["pipeline"] else expected
    if tuple(row["shape"]) != want or row["dtype"] != "uint8":
      raise AssertionError(f"{row['pipeline']}: batch {row['shape']} {row['dtype']}, expected "
                           f"{want} uint8.")
  print(f"{args.num_images} JPEGs {hw[0]}x{hw[1]} -> batch {args.batch} uint8 "
        f"{args.size}x{args.size}x3; {cores} cores; median of {args.reps} x {args.steps} batches\n")
  print("| pipeline | workers | img/s | img/s/core | CPU ms/img |\n|---|---:|---:|---:|---:|")
  for r in rows:
    per_core = f"{r['img_per_cpu_s']:,.0f}" if r["img_per_cpu_s"] else "-"
    print(f"| {r['pipeline']} | {r['workers']} | {r['img_per_s']:,.0f} | {per_core} | "
          f"{r['cpu_ms_per_img']:.2f} |")
  if costs:
    print(f"\nCPU ms per image, one thread -> {args.size}x{args.size}x3:\n\n| JPEG | decoded "
          "(centre crop) | decoded, draft | full-image crop, 2 views | the same without draft |\n"
          "|---|---:|---:|---:|---:|")
    for c in costs:
      print(f"| {c['image_hw'][0]}x{c['image_hw'][1]} | {c['decoded_ms']:.2f} | "
            f"{c['decoded_draft_ms']:.2f} | {c['full_crop_2_views_ms']:.2f} | "
            f"{c['full_crop_2_views_no_draft_ms']:.2f} |")
  for note in notes:
    print("note:", note)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"rows": rows, "crop_costs": costs, "notes": notes, "cpu_count": cores, "args": vars(args),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
