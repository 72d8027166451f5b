"""The pairwise engine shared by every contrastive loss.

A loss sees its anchors as *rows* and the whole global batch as *columns*. In the dense mode rows and
columns are the same ``batch * views`` embeddings; in the row-sharded mode (``axis_name`` given, the
loss called per shard inside ``jax.shard_map``) each device owns the rows of its local samples and
all-gathers the columns. ``blockwise.row_statistics`` evaluates a loss' per-row statistics either on
the whole matrix or tile by tile with an online log-sum-exp (O(M) memory, custom VJP). The per-pair math of a loss is written once against this row/column view.
"""

from contrastive_jax.pairwise import blockwise
from contrastive_jax.pairwise import fused
from contrastive_jax.pairwise.blockwise import Blocking
from contrastive_jax.pairwise.blockwise import DotPairFn
from contrastive_jax.pairwise.blockwise import blocking
from contrastive_jax.pairwise.blockwise import row_statistics
from contrastive_jax.pairwise.blockwise import tile_dot
from contrastive_jax.pairwise.rows import Rows
from contrastive_jax.pairwise.rows import global_mean
from contrastive_jax.pairwise.rows import l2_normalize
from contrastive_jax.pairwise.rows import make_rows
from contrastive_jax.pairwise.rows import masked_logsumexp
from contrastive_jax.pairwise.rows import pairwise_euclidean
