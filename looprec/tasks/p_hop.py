"""p-hop induction (Sanford et al., 2024; the setting of Saunshi et al., 2025): a sequence v over an alphabet, then
p hop markers; the answer, read at the last marker, is hop_p: from the last symbol, p times jump to the position
just after the previous occurrence of the current symbol, and read the symbol there (`none` where a jump has no
previous occurrence). The difficulty is p (see docs/decisions.md for the format and where it differs)."""
import numpy as np

from looprec.tasks import DifficultyTask, SimpleVocab, TaskConfig, register_task


def hop_targets(v_BxN, p_B, none: int) -> np.ndarray:
  """hop_p of each row of v_BxN (symbol ids), `none` where a jump finds no previous occurrence."""
  b, n = v_BxN.shape
  rows = np.arange(b)
  after_BxN = np.full((b, n), -1)  # after[i] = 1 + the last j < i with v[j] == v[i], else -1
  last_BxS = np.full((b, int(v_BxN.max()) + 1), -1)
  for i in range(n):
    prev = last_BxS[rows, v_BxN[:, i]]
    after_BxN[:, i] = np.where(prev >= 0, prev + 1, -1)
    last_BxS[rows, v_BxN[:, i]] = i
  pos_B = np.full(b, n - 1)
  for k in range(int(np.max(p_B))):
    jump = (k < p_B) & (pos_B >= 0)
    pos_B = np.where(jump, after_BxN[rows, np.maximum(pos_B, 0)], pos_B)
  return np.where(pos_B >= 0, v_BxN[rows, np.maximum(pos_B, 0)], none)


@register_task("p_hop", difficulty="p")
class PHop(DifficultyTask):
  """Sequences of data.context symbols of data.n_symbols, then p markers."""

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
    """Symbols uniform (token 1 + s); p markers after them, the answer read at the last."""
    c, p_B = self.cfg, np.asarray(p_B)
    v_BxN = rng.integers(0, c.n_symbols, (len(p_B), c.context))
    marks_BxP = np.where(np.arange(p_B.max())[None, :] < p_B[:, None], c.n_symbols + 2, 0)
    return {"tokens": np.concatenate([1 + v_BxN, marks_BxP], axis=1).astype(np.int32),
            "read_pos": (c.context + p_B - 1).astype(np.int32),
            "target": (1 + hop_targets(v_BxN, p_B, c.n_symbols)).astype(np.int32), "hop": p_B.astype(np.int32)}
