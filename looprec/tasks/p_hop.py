"""p-hop induction (Sanford et al., 2024; the setting of Saunshi et al., 2025): p hop markers, then a sequence v over
an alphabet; hop_p at a position: p times jump to the position just after the previous occurrence of the current
symbol, and read the symbol there (`none` where a jump has no previous occurrence). The answer is hop_p at the last
position; training supervises hop_p at every position of v (Sanford et al. define the output as that sequence).
The difficulty is p (see docs/decisions.md for the format and where it differs)."""
import numpy as np

from looprec.tasks import DifficultyTask, SimpleVocab, TaskConfig, register_task


def hop_all(v_BxN, p_B, none: int) -> np.ndarray:
  """B x N: entry i is hop_p of row b's prefix v[:i + 1] (symbol ids), `none` where a jump finds no previous
  occurrence. A jump only moves back, so hop_p of a prefix is the chase from its last position."""
  b, n = v_BxN.shape
  rows_B = np.arange(b)
  after_BxN = np.full((b, n), -1)  # after[i] = 1 + the last j < i with v[j] == v[i], else -1
  last_BxS = np.full((b, int(v_BxN.max()) + 1), -1)
  for i in range(n):
    prev = last_BxS[rows_B, v_BxN[:, i]]
    after_BxN[:, i] = np.where(prev >= 0, prev + 1, -1)
    last_BxS[rows_B, v_BxN[:, i]] = i
  pos_BxN = np.broadcast_to(np.arange(n), (b, n)).copy()
  for k in range(int(np.max(p_B))):
    jump_BxN = (k < np.asarray(p_B))[:, None] & (pos_BxN >= 0)
    pos_BxN = np.where(jump_BxN, after_BxN[rows_B[:, None], np.maximum(pos_BxN, 0)], pos_BxN)
  return np.where(pos_BxN >= 0, v_BxN[rows_B[:, None], np.maximum(pos_BxN, 0)], none)


def hop_targets(v_BxN, p_B, none: int) -> np.ndarray:
  """hop_p of each row of v_BxN (at its last position)."""
  return hop_all(v_BxN, p_B, none)[:, -1]


@register_task("p_hop", difficulty="p")
class PHop(DifficultyTask):
  """p markers, then data.context symbols of data.n_symbols."""

  def __init__(self, cfg: TaskConfig):
    super().__init__(cfg)
    self.vocab = SimpleVocab(("<pad>", *(f"s{i}" for i in range(cfg.n_symbols)), "none", "hop"))
    self.n_answers = cfg.n_symbols + 1

  @staticmethod
  def capacity(cfg: TaskConfig) -> int:
    return cfg.seq_len - cfg.context

  def width(self, difficulty: int) -> int:
    return self.cfg.context + difficulty

  def examples(self, rng: np.random.Generator, p_B) -> dict:
    """Symbols uniform (token 1 + s) after p markers (left-aligned: p_max - p pads after the symbols); the answer
    read at the last symbol, `targets` hop_p at every symbol (data.every_position)."""
    c, p_B = self.cfg, np.asarray(p_B)
    n, width = c.context, c.context + int(p_B.max())
    v_BxN = rng.integers(0, c.n_symbols, (len(p_B), n))
    cols_BxN = p_B[:, None] + np.arange(n)
    rows_BxN = np.broadcast_to(np.arange(len(p_B))[:, None], cols_BxN.shape)
    tokens_BxT = np.where(np.arange(width)[None, :] < p_B[:, None], c.n_symbols + 2, 0)
    tokens_BxT[rows_BxN, cols_BxN] = 1 + v_BxN
    targets_BxT = np.zeros_like(tokens_BxT)
    targets_BxT[rows_BxN, cols_BxN] = 1 + hop_all(v_BxN, p_B, c.n_symbols)
    out = {"tokens": tokens_BxT.astype(np.int32), "read_pos": (p_B + n - 1).astype(np.int32),
           "target": targets_BxT[np.arange(len(p_B)), p_B + n - 1].astype(np.int32), "hop": p_B.astype(np.int32)}
    return {**out, "targets": targets_BxT.astype(np.int32)} if c.every_position else out
