"""STS-B-DIR (ACCon Tab. 1 / 2, issue 13 item 7): the data source (tokenisation, vocabulary, word
vectors and their out-of-vocabulary rows as the official DIR code), the BiLSTM pair encoder, and
``configs/accon.py:sts_b`` end to end through ``python -m launch`` on a generated tiny STS-B tree with
a generated GloVe-format embedding file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import data as data_lib
from contrastive_jax import models
from contrastive_jax.data.sources import sts_b
from contrastive_jax.evaluate import shot_metrics
from contrastive_jax.train import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import accon, supremix  # pylint: disable=g-import-not-at-top,wrong-import-position

HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
WORDS = ("A man woman dog cat is playing guitar piano the runs sleeps on grass a and . "
         "Two people are eating").split()
IN_FILE = [w for w in WORDS if w not in ("dog", "Two")]  # 'dog', 'Two': not in the vector file
DIM = 6


def _row(i, s1, s2, score):
  return "\t".join([str(i), "main", "f", "2012", str(i), "none", "none", s1, s2, score])


def write_sts_b(root, sizes=(32, 8, 8), seed=0):
  """A tiny STS-B tree (the official files' columns) and a GloVe-format vector file."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows_of = {}
  for (part, filename), size in zip(sts_b.FILES.items(), sizes):
    rows = [HEADER]
    for i in range(size):
      s1 = " ".join(rng.choice(WORDS[:-5], rng.integers(3, 8))) + "."
      s2 = " ".join(rng.choice(WORDS[:-5], rng.integers(3, 8))) + "."
      rows.append(_row(i, s1, s2, f"{0.2 * rng.integers(0, 26):.3f}"))
    rows.append(_row(size, "A man is.", "A dog.", ""))  # no score: skipped
    rows.append("short\trow")                          # too few columns: skipped
    rows_of[part] = rows
    with open(os.path.join(root, filename), "w", encoding="utf-8") as f:
      f.write("\n".join(rows) + "\n")
  vectors = np.round(np.random.default_rng(seed + 1).normal(size=(len(IN_FILE) + 1, DIM)), 6)
  with open(os.path.join(root, "vectors.txt"), "w", encoding="utf-8") as f:
    for word, vec in zip(IN_FILE + ["unused"], vectors):
      f.write(word + " " + " ".join(f"{v:.6f}" for v in vec) + "\n")
  return str(root), dict(zip(IN_FILE + ["unused"], vectors.astype(np.float32)))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  return write_sts_b(tmp_path_factory.mktemp("sts_b"))


@pytest.mark.parametrize("text,tokens", [
    ("A man isn't playing the guitar.", ["A", "man", "is", "n't", "playing", "the", "guitar", "."]),
    ('He said "hi, there" (twice)!', ["He", "said", "``", "hi", ",", "there", "''", "(", "twice",
                                      ")", "!"]),
    ("The cat's toy costs $5.50; we're done", ["The", "cat", "'s", "toy", "costs", "$", "5.50", ";",
                                               "we", "'re", "done"]),
    ("I cannot go. She left.", ["I", "can", "not", "go", ".", "She", "left", "."]),
    ("Dr. Smith arrived.", ["Dr.", "Smith", "arrived", "."]),
    # NLTK 3.6.7's NLTKWordTokenizer (the official environment's newest NLTK) on these strings:
    ("\u201cWait...\u201d she said*, 'a test' isn\u2019t over.",
     ["\u201c", "Wait", "...", "\u201d", "she", "said", "*", ",", "'", "a", "test", "'", "isn",
      "\u2019", "t", "over", "."]),
    ("Cameron 'has no concerns' -- they're gonna win",
     ["Cameron", "'has", "no", "concerns", "'", "--", "they", "'re", "gon", "na", "win"]),
])
def test_tokenize_as_nltk_word_tokenize(text, tokens):
  assert sts_b.tokenize(text) == tokens


def test_vocabulary_and_word_vectors_as_the_official_code(tree, tmp_path):
  root, vectors = tree
  s1, s2, y = sts_b.read_pairs(os.path.join(root, "train_new.tsv"), max_seq_len=40)
  assert len(s1) == len(s2) == len(y) == 32  # the row without a score and the short row skipped
  vocab = sts_b.build_vocab([["b", "a", "b"], ["c", "a", "b"]], max_vocab=2)
  assert vocab == {"b": 2, "a": 3}  # by frequency; 'c' beyond max_vocab -> unknown
  ids = sts_b.token_ids([["a", "c", "b"]], vocab, 5)
  np.testing.assert_array_equal(ids, [[3, sts_b.UNK, 2, sts_b.PAD, sts_b.PAD]])

  vocab = sts_b.build_vocab(s1 + s2)
  table, found = sts_b.embedding_table(os.path.join(root, "vectors.txt"), vocab, DIM, seed=0)
  assert found == len([w for w in IN_FILE if w in vocab])
  for word, index in vocab.items():
    if word in vectors:  # a word in the file: its vector
      np.testing.assert_array_equal(table[index], vectors[word])
  assert "dog" in vocab and np.all(table[vocab["dog"]] != 0)  # not in the file: random N(0, 1)
  np.testing.assert_array_equal(table[sts_b.PAD], 0.0)
  assert np.all(table[sts_b.UNK] != 0)  # the unknown word keeps a random row too
  again, _ = sts_b.embedding_table(os.path.join(root, "vectors.txt"), vocab, DIM, seed=0)
  np.testing.assert_array_equal(again, table)  # seeded

  bad = tmp_path / "bad.txt"
  bad.write_text("man 1 2 3\n")
  with pytest.raises(ValueError, match="line 1.*'man' has 3"):
    sts_b.embedding_table(bad, vocab, DIM)


def test_source_embeds_pairs_with_a_mask_channel(tree):
  root, vectors = tree
  ds = data_lib.load_dataset("sts_b", seed=0, root=root, embeddings="vectors.txt",
                             embedding_dim=DIM, max_seq_len=5)
  assert ds.kind == "text" and ds.name == "sts_b_dir"
  assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 8)
  assert ds.train.x.shape == (32, 2, 5, DIM + 1) and ds.train.x.dtype == np.float32
  s1, _, y = sts_b.read_pairs(os.path.join(root, "train_new.tsv"), max_seq_len=5)
  np.testing.assert_allclose(ds.train.y, y)
  item = ds.train.x[0]
  first = s1[0]
  np.testing.assert_array_equal(item[0, :, -1], [1.0] * len(first) + [0.0] * (5 - len(first)))
  for pos, word in enumerate(first):
    if word in vectors:
      np.testing.assert_array_equal(item[0, pos, :DIM], vectors[word])
  np.testing.assert_array_equal(item[0, len(first):], 0.0)
  natural = data_lib.load_dataset("sts_b", seed=3, root=root, embeddings="vectors.txt",
                                  embedding_dim=DIM, split_mode="natural")
  assert natural.name == "sts_b_natural" and len(natural.train) == 32
  every = lambda d: np.sort(np.concatenate([d.train.y, d.val.y, d.test.y]))
  np.testing.assert_array_equal(every(natural), every(ds))  # the same pairs, re-partitioned
  assert not np.array_equal(natural.test.y, ds.test.y)
  with pytest.raises(ValueError, match="data.kwargs.embeddings"):
    data_lib.load_dataset("sts_b", root=root)
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    data_lib.load_dataset("sts_b", root=root, embeddings="missing.txt", embedding_dim=DIM)


def test_bilstm_pair_encoder_shapes_and_padding():
  # Two layers (the official depth): the second reads both directions of the first (traced only).
  two = models.ENCODERS["bilstm_pair"](hidden_size=4, num_layers=2)
  shapes = jax.eval_shape(lambda k: two.init(k, jnp.zeros((3, 2, 7, DIM + 1)), train=False),
                          jax.random.PRNGKey(0))["params"]
  assert sorted(shapes) == ["lstm_0_backward", "lstm_0_forward", "lstm_1_backward", "lstm_1_forward"]
  assert shapes["lstm_0_forward"]["ii"]["kernel"].shape == (DIM, 4)
  assert shapes["lstm_1_backward"]["ii"]["kernel"].shape == (2 * 4, 4)
  encoder = models.ENCODERS["bilstm_pair"](hidden_size=4, num_layers=1)  # dropout: training only
  rng = np.random.default_rng(0)
  lengths = np.array([[3, 5], [1, 2], [5, 4]])
  x = np.zeros((3, 2, 7, DIM + 1), np.float32)
  for i, j in np.ndindex(3, 2):
    x[i, j, :lengths[i, j], :DIM] = rng.normal(size=(lengths[i, j], DIM))
    x[i, j, :lengths[i, j], DIM] = 1.0
  variables = encoder.init(jax.random.PRNGKey(0), x, train=False)
  apply = jax.jit(encoder.apply, static_argnames="train")
  out = apply(variables, x, train=False)
  chex.assert_shape(out, (3, 8 * 4))  # [u, v, |u - v|, u * v], u = 2 * hidden
  u, v = out[:, :8], out[:, 8:16]
  chex.assert_trees_all_close(out[:, 16:24], jnp.abs(u - v), atol=1e-6)
  chex.assert_trees_all_close(out[:, 24:], u * v, atol=1e-6)
  # Padding is masked: garbage in the padded positions changes nothing.
  garbage = x.copy()
  garbage[..., :DIM] += 9.0 * (x[..., DIM:] == 0)
  chex.assert_trees_all_close(apply(variables, garbage, train=False), out, atol=1e-5)


def test_accon_sts_b_config():
  config = accon.get_config("sts_b")
  assert config.data.name == "sts_b" and config.model.encoder == "bilstm_pair"
  assert config.data.views == 1 and config.data.augment_kind == "identity"
  assert config.loss.reg == "mse" and config.loss.gamma_con == 10.0
  assert config.loss.contrastive.temperature == 1.0 and config.loss.contrastive.label_range == 5.0
  assert (config.batch_size, config.optim.lr, config.num_train_steps) == (128, 1e-4, 40000)
  assert config.eval.shots.to_dict() == dict(bin_width=0.1, many=100, few=30, top=5.0)
  assert run.config_identity(config)["eval"]["shots"]["few"] == 30
  assert "shots" not in run.config_identity(accon.get_config("agedb"))["eval"]


def test_supremix_sts_b_config():
  config = supremix.get_config("sts_b")  # Mixup-Your-Own-Pairs sts-b-dir README command
  assert (config.data.name, config.data.kwargs.split_mode, config.data.views) == ("sts_b", "balanced", 1)
  assert (config.loss.contrastive.temperature, config.loss.contrastive.window) == (0.1, 1.0)
  assert (config.model.proj_dim, config.model.proj_hidden_dim, config.model.proj_batch_norm) == (
      128, 128, False)
  assert (config.loss.gamma_reg, config.eval_with, config.batch_size) == (0.0, "ridge", 128)


def test_sts_b_shot_bins_as_the_official_code():
  """50 bins of 0.1 over [0, 5] (DIR util.py STSShotAverage): float32 scores on a bin edge fall in
  the bin they start, 5.0 in [4.9, 5.0]; many > 100, few < 30 training pairs."""
  train = np.float32(np.repeat([1.8, 2.6, 4.95, 5.0, 0.3], [101, 30, 1, 100, 29]))
  test = np.float32([1.8, 2.6, 5.0, 0.3, 4.0])
  out = shot_metrics(test, test, train, bin_width=0.1, many=100, few=30, top=5.0)
  assert (out["many"]["n"], out["medium"]["n"], out["few"]["n"]) == (2, 1, 2)  # 5.0: 101 in bin 49
  out = shot_metrics(test, test, train, bin_width=0.1, many=100, few=30)  # 5.0 alone: 100, medium
  assert (out["many"]["n"], out["medium"]["n"], out["few"]["n"]) == (1, 2, 2)


def test_accon_sts_b_launch_end_to_end(tree, tmp_path):
  root, _ = tree
  workdir = tmp_path / "run"
  args = ["--config=configs/accon.py:sts_b", f"--config.data.root={root}",
          "--config.data.kwargs.embeddings=vectors.txt", f"--config.data.kwargs.embedding_dim={DIM}",
          "--config.data.kwargs.split_mode=balanced", "--config.data.kwargs.max_seq_len=6",
          "--config.model.encoder_kwargs.hidden_size=4", "--config.model.encoder_kwargs.num_layers=1",
          "--config.model.proj_dim=4", "--config.model.proj_hidden_dim=8", "--config.batch_size=8",
          "--config.eval_batch_size=8", "--config.num_train_steps=2", "--config.eval_every=2",
          "--config.checkpoint_every=2", "--config.log_every=2", f"--workdir={workdir}"]
  done = subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(workdir / "results.json"))
  assert results["dataset"] == "sts_b_dir" and results["steps"] == 2
  for key in ("mae", "mse", "pearson", "spearman", "gmean", "r2"):
    assert np.isfinite(results["test"][key]), key
  shots = results["test_shots"]
  assert sum(shots[g]["n"] for g in ("many", "medium", "few")) == shots["all"]["n"] == 8
  assert shots["all"]["mae"] == pytest.approx(results["test"]["mae"], rel=1e-6)


@pytest.mark.slow
def test_supremix_sts_b_trains(tree, tmp_path):
  """SupReMix's STS-B variant on the tiny tree: one view, mixtures, then the ridge probe."""
  from contrastive_jax.train import train_and_evaluate  # pylint: disable=g-import-not-at-top
  root, _ = tree
  config = supremix.get_config("sts_b")
  config.data.root = root
  config.data.kwargs.update(embeddings="vectors.txt", embedding_dim=DIM, max_seq_len=6)
  config.model.encoder_kwargs.update(hidden_size=4, num_layers=1)
  config.model.proj_dim = config.model.proj_hidden_dim = 4
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = config.eval_every = config.checkpoint_every = 2
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert results["dataset"] == "sts_b_dir" and results["eval_with"] == "ridge"
  assert np.isfinite(results["test"]["mae"]) and results["test_shots"]["all"]["n"] == 8
