"""STS-B-DIR: sentence-pair similarity regression (score 0-5) with frozen word embeddings.

The DIR benchmark of Yang et al. (ICML 2021; YyzHarry/imbalanced-regression, ``sts-b-dir/``) cut the
GLUE STS-B sentence pairs into ``train_new.tsv`` / ``dev_new.tsv`` / ``test_new.tsv`` (5,249 / 1,000 /
1,000 pairs; val and test balanced over the score), which ACCon (Zhao et al., AAAI 2025, Tab. 1 / 2)
and SupReMix use as they are. Expected layout (the official ``glue_data/STS-B`` folder)::

    root/train_new.tsv   GLUE STS-B columns; 7 = sentence1, 8 = sentence2, 9 = score; one header row
    root/dev_new.tsv
    root/test_new.tsv

plus a word-embedding file in GloVe's text format, one word a line: ``word v_1 ... v_D`` (the papers:
glove.840B.300d.txt; not downloadable here, so its path is an argument, ``embeddings``).

Pipeline, as the official code (``sts-b-dir/tasks.py``, ``preprocess.py``):

* Each sentence is tokenised (:func:`tokenize`) and cut to ``max_seq_len`` tokens (40,
  ``train.py --max_seq_len``); a row whose score or either sentence is empty is skipped
  (``tasks.load_tsv``).
* Vocabulary: every token of the three splits, by decreasing frequency (ties: first occurrence),
  at most ``max_vocab`` words (30,000, ``--max_word_v_size``), after index 0 = padding and 1 = the
  unknown word (AllenNLP's ``Vocabulary``); a token outside it maps to the unknown word.
* Embedding table ``[V, D]``: N(0, 1) rows (``np.random.randn``; ours drawn from ``seed``), the rows
  of the words found in the file replaced by their vectors, the padding row 0
  (``preprocess.get_embeddings``). A vocabulary word missing from the file (and the unknown word)
  keeps its random vector: the official out-of-vocabulary handling. The table is frozen
  (``--train_words 0``), so looking it up on the host is the same as a non-trainable embedding layer.

Each example ``x`` is float32 ``[2, max_seq_len, D + 1]``: the two sentences' embedded tokens,
zero-padded, with a last channel that is 1 on real tokens and 0 on padding (the LSTM mask;
``models.text.BiLSTMPairEncoder`` reads it). ``y`` is the score. Rows are embedded lazily
(``base.LazyArray``), so only the token ids and the table sit in memory.

Split modes (ACCon "Datasets"): ``'balanced'`` -- the three files (STS-B-DIR, Tab. 2);
``'natural'`` -- all rows permuted with ``seed`` and cut into parts of the balanced split's sizes
(STS-B-Natural, Tab. 1; ACCon ships its own partition as pickles, ``sts-b/glue_data/STS-B/
*_natural.pkl``, which we do not read).

Tokeniser: the official code calls ``nltk.word_tokenize`` (Punkt sentence splitting, then
``NLTKWordTokenizer``'s word rules); its Python 3.6 environment installs NLTK 3.6.7 at the newest.
NLTK is not a dependency here: :func:`tokenize` implements those word rules (quotes, punctuation,
brackets, clitics such as ``n't`` / ``'s``) and gives the same tokens as NLTK 3.6.7's
``NLTKWordTokenizer`` on all 14,498 sentences of the STS-B-DIR files (checked). For sentences it
splits only where a period, ``?`` or ``!`` after a lower-case word or a number is followed by a
space and a capital letter (Punkt also knows abbreviations; one STS-B-DIR sentence has such a
split). Tokens are case-sensitive, as GloVe 840B is.
"""

from __future__ import annotations

import collections
import csv
import logging
import os
import re
from typing import Sequence

import numpy as np

from contrastive_jax.data.demo import Dataset
from contrastive_jax.data.sources import base
from contrastive_jax.data.sources import dir_benchmark

FILES = {'train': 'train_new.tsv', 'val': 'dev_new.tsv', 'test': 'test_new.tsv'}
COLUMNS = (7, 8, 9)  # sentence1, sentence2, score (tasks.py: s1_idx=7, s2_idx=8, targ_idx=9)
PAD, UNK = 0, 1       # AllenNLP's @@PADDING@@ and @@UNKNOWN@@ indices
SPLIT_MODES = ('balanced', 'natural')

# The word rules of NLTK 3.6.7's NLTKWordTokenizer (the last NLTK for the official code's Python
# 3.6): the Treebank rules plus Unicode quotes, '...', '*' and a quote opening a one-letter word.
# Applied in this order: starting quotes, punctuation, brackets; then ending quotes and clitics.
_CLOSERS = '\\]\\)}>"\'\u00bb\u201d\u2019 '
_STARTING_QUOTES = [(re.compile('([\u00ab\u201c\u2018\u201e]|`+)'), r' \1 '),
                    (re.compile(r'^"'), r'``'), (re.compile(r'(``)'), r' \1 '),
                    (re.compile(r'([ (\[{<])("|\'{2})'), r'\1 `` '),
                    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r'\1 \2')]
_FINAL_PERIOD = re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$')
_PUNCTUATION = [(re.compile('([^\\.])(\\.)([' + _CLOSERS + ']*)\\s*$'), r'\1 \2 \3 '),
                (re.compile(r'([:,])([^\d])'), r' \1 \2'), (re.compile(r'([:,])$'), r' \1 '),
                (re.compile(r'\.{2,}'), r' \g<0> '), (re.compile(r'[;@#$%&]'), r' \g<0> '),
                (_FINAL_PERIOD, r'\1 \2\3 '), (re.compile(r'[?!]'), r' \g<0> '),
                (re.compile(r"([^'])' "), r"\1 ' "), (re.compile(r'[*]'), r' \g<0> ')]
_BRACKETS = [(re.compile(r'[\]\[\(\)\{\}\<\>]'), r' \g<0> '), (re.compile(r'--'), r' -- ')]
_ENDING_QUOTES = [(re.compile('([\u00bb\u201d\u2019])'), r' \1 '), (re.compile(r"''"), " '' "),
                  (re.compile(r'"'), " '' "),
                  (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r'\1 \2 '),
                  (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r'\1 \2 ')]
_CONTRACTIONS = [re.compile(p, re.IGNORECASE) for p in (
    r'\b(can)(not)\b', r"\b(d)('ye)\b", r'\b(gim)(me)\b', r'\b(gon)(na)\b', r'\b(got)(ta)\b',
    r'\b(lem)(me)\b', r"\b(more)('n)\b", r'\b(wan)(na)(?=\s)', r" ('t)(is)\b", r" ('t)(was)\b")]
# A sentence end: a lower-case word (2+ letters) or a number, then . ? or !, a space, a capital.
_SENTENCE_END = re.compile(r'(?:\b[a-z]{2,}|\d)[.?!](\s+)(?=[A-Z])')


def _word_tokenize(sentence: str) -> list[str]:
  """The Treebank word rules on one sentence."""
  text = sentence
  for pattern, repl in _STARTING_QUOTES + _PUNCTUATION + _BRACKETS:
    text = pattern.sub(repl, text)
  text = ' ' + text + ' '
  for pattern, repl in _ENDING_QUOTES:
    text = pattern.sub(repl, text)
  for pattern in _CONTRACTIONS:
    text = pattern.sub(r' \1 \2 ', text)
  return text.split()


def tokenize(text: str) -> list[str]:
  """Word tokens of ``text`` (``nltk.word_tokenize``'s rules; see the module docstring).

  >>> tokenize("A man isn't playing the guitar.")
  ['A', 'man', 'is', "n't", 'playing', 'the', 'guitar', '.']
  """
  text, parts, start = text.strip(), [], 0
  for match in _SENTENCE_END.finditer(text):
    parts.append(text[start:match.start(1)])
    start = match.end(1)
  parts.append(text[start:])
  return [tok for part in parts for tok in _word_tokenize(part)]


def read_pairs(path: str | os.PathLike, max_seq_len: int = 40):
  """``(sentences1, sentences2, scores)`` of one split file (``tasks.load_tsv``).

  The header row is skipped; a row with fewer than 10 columns, an empty score or a sentence with no
  token is skipped, as the official loader does (its ``try``/``continue``); a score that is not a
  finite number is an error naming the file and line (the official loader skips it silently).
  """
  path = base.require_file(path, 'STS-B split file')
  first, second, scores = [], [], []
  with open(path, encoding='utf-8', newline='') as f:
    rows = csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
    next(rows, None)
    for line, row in enumerate(rows, start=2):
      if len(row) <= max(COLUMNS) or not row[COLUMNS[2]].strip():
        continue
      s1 = tokenize(row[COLUMNS[0]])[:max_seq_len]
      s2 = tokenize(row[COLUMNS[1]])[:max_seq_len]
      if not s1 or not s2:
        continue
      try:
        score = float(row[COLUMNS[2]])
      except ValueError as exc:
        raise ValueError(f'{path}, line {line}: score {row[COLUMNS[2]]!r} is not a number.') from exc
      if not np.isfinite(score):
        raise ValueError(f'{path}, line {line}: score {row[COLUMNS[2]]!r} is not finite.')
      first.append(s1)
      second.append(s2)
      scores.append(score)
  if not scores:
    raise ValueError(f'{path}: no sentence pair with a score (expected GLUE STS-B columns: 7 = '
                     'sentence1, 8 = sentence2, 9 = score, and a header row).')
  return first, second, np.asarray(scores, np.float32)


def build_vocab(sentences: Sequence[Sequence[str]], max_vocab: int = 30000) -> dict[str, int]:
  """Token -> index: 0 padding, 1 unknown, then the ``max_vocab`` most frequent tokens (ties: the
  first seen first; ``preprocess.get_words`` / ``get_vocab``)."""
  counts = collections.Counter(tok for sentence in sentences for tok in sentence)
  ordered = sorted(counts.items(), key=lambda kv: -kv[1])  # stable: first occurrence breaks ties
  return {word: i + 2 for i, (word, _) in enumerate(ordered[:max_vocab])}


def embedding_table(path: str | os.PathLike, vocab: dict[str, int], dim: int,
                    seed: int = 0) -> tuple[np.ndarray, int]:
  """The ``[len(vocab) + 2, dim]`` float32 table of ``vocab`` (``preprocess.get_embeddings``) and the
  number of vocabulary words found in the file.

  Rows: N(0, 1) from ``seed``; a vocabulary word's row is its vector in the file; row ``PAD`` is 0.
  Each line is split at its first space into the word and ``dim`` numbers (as the official code;
  lines of words outside the vocabulary are not parsed).

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: a vocabulary word's line without exactly ``dim`` finite numbers (file and line
      named).
  """
  path = base.require_file(path, 'word-embedding file (GloVe text format)')
  table = np.random.default_rng([int(seed), 0x57]).standard_normal((len(vocab) + 2, dim))
  found = set()
  with open(path, encoding='utf-8', errors='replace') as f:
    for line_no, line in enumerate(f, start=1):
      word, _, rest = line.rstrip('\n').partition(' ')
      index = vocab.get(word)
      if index is None:
        continue
      try:
        vector = np.asarray(rest.split(), np.float64)
      except ValueError as exc:
        raise ValueError(f'{path}, line {line_no}: the vector of {word!r} is not numbers.') from exc
      if vector.shape != (dim,) or not np.all(np.isfinite(vector)):
        raise ValueError(f'{path}, line {line_no}: {word!r} has {vector.size} finite value(s) where '
                         f'{dim} are expected (embedding_dim={dim}).')
      table[index] = vector
      found.add(index)
  table[PAD] = 0.0
  return table.astype(np.float32), len(found)


def token_ids(sentences: Sequence[Sequence[str]], vocab: dict[str, int],
              max_seq_len: int) -> np.ndarray:
  """``[N, max_seq_len]`` int32 ids, right-padded with ``PAD``; unknown tokens -> ``UNK``."""
  ids = np.full((len(sentences), max_seq_len), PAD, np.int32)
  for row, sentence in enumerate(sentences):
    ids[row, :len(sentence)] = [vocab.get(tok, UNK) for tok in sentence[:max_seq_len]]
  return ids


class PairEmbedder:
  """``i -> [2, L, D + 1]``: the embedded tokens of pair ``i`` plus the token mask (a class, so a
  ``LazyArray`` over it pickles)."""

  def __init__(self, ids: np.ndarray, table: np.ndarray):
    self.ids = ids      # [N, 2, L] int32
    self.table = table  # [V, D] float32

  def __call__(self, i: int) -> np.ndarray:
    ids = self.ids[i]
    mask = (ids != PAD).astype(np.float32)[..., None]
    return np.concatenate([self.table[ids] * mask, mask], axis=-1)


def load_sts_b(root: str | os.PathLike, *, seed: int = 0,
               embeddings: str | os.PathLike | None = None, split_mode: str = 'balanced',
               max_seq_len: int = 40, max_vocab: int = 30000, embedding_dim: int = 300) -> Dataset:
  """Loads STS-B-DIR (balanced) or STS-B-Natural as embedded sentence pairs (module docstring).

  Args:
    root: the folder holding ``train_new.tsv``, ``dev_new.tsv`` and ``test_new.tsv``.
    seed: seed of the random embedding rows and of the natural split.
    embeddings: the word-embedding text file (GloVe format); a relative path is taken relative to
      ``root``. Required.
    split_mode: ``'balanced'`` (the files' split) or ``'natural'`` (random, same sizes).
    max_seq_len: tokens kept per sentence (40).
    max_vocab: vocabulary size (30,000).
    embedding_dim: the vectors' length in the file (300 for GloVe 840B).

  Returns:
    ``Dataset`` named ``'sts_b_dir'`` / ``'sts_b_natural'``, kind ``'text'``; ``x`` lazy float32
    ``[N, 2, max_seq_len, embedding_dim + 1]``, ``y`` the score.

  Raises:
    ValueError: no ``embeddings`` path, unknown ``split_mode``, bad sizes, bad rows / vectors.
    FileNotFoundError: a split file or the embedding file is missing (named).
  """
  if split_mode not in SPLIT_MODES:
    raise ValueError(f'split_mode must be one of {SPLIT_MODES}, got {split_mode!r}.')
  for name, value in (('max_seq_len', max_seq_len), ('max_vocab', max_vocab),
                      ('embedding_dim', embedding_dim)):
    if isinstance(value, bool) or int(value) != value or value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  if not embeddings:
    raise ValueError('STS-B needs a word-embedding file in GloVe text format (the papers: '
                     'glove.840B.300d.txt): set --config.data.kwargs.embeddings=/path/to/file.')
  root = base.require_dir(root, 'STS-B data folder')
  embeddings = os.path.join(root, os.fspath(embeddings))  # an absolute path stays as it is
  parts, first, second, scores, start = {}, [], [], [], 0
  for part, filename in FILES.items():
    s1, s2, y = read_pairs(os.path.join(root, filename), max_seq_len)
    parts[part] = np.arange(start, start + len(y))
    start += len(y)
    first += s1
    second += s2
    scores.append(y)
  vocab = build_vocab(first + second, max_vocab)
  table, found = embedding_table(embeddings, vocab, embedding_dim, seed)
  logging.getLogger('contrastive_jax').info(
      'STS-B: %d of %d vocabulary words found in %s; the others keep random vectors.', found,
      len(vocab), embeddings)
  ids = np.stack([token_ids(first, vocab, max_seq_len), token_ids(second, vocab, max_seq_len)], 1)
  if split_mode == 'natural':
    parts = dir_benchmark.natural_parts({k: len(v) for k, v in parts.items()}, seed)
  x = base.LazyArray(PairEmbedder(ids, table), len(ids), (2, max_seq_len, embedding_dim + 1),
                     np.float32)
  name = 'sts_b_dir' if split_mode == 'balanced' else 'sts_b_natural'
  return base.make_dataset(name, 'text', x, np.concatenate(scores), parts)
