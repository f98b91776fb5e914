"""Copy (Fan et al., 2024): a bit string, `=`, then blanks; the answer, the string itself, is read all at once (not
generated) from `=` on: bit j at position n + j. The difficulty is the string's length n (see docs/decisions.md
for the format and where it differs)."""
import numpy as np

from looprec.tasks import DifficultyTask, SimpleVocab, TaskConfig, register_task, sequence_answer

ZERO, QUERY, BLANK = 1, 3, 4  # bit b is token 1 + b


@register_task("copy", difficulty="length", answer="sequence")
class Copy(DifficultyTask):
  """Bit strings of length n, answered by the same n bits."""

  vocab = SimpleVocab(("<pad>", "0", "1", "=", "_"))
  n_answers = 2

  @staticmethod
  def capacity(cfg: TaskConfig) -> int:
    return cfg.seq_len // 2

  @staticmethod
  def width(difficulty: int) -> int:
    return 2 * difficulty

  @staticmethod
  def answer_length(difficulty: int) -> int:
    return difficulty

  @staticmethod
  def examples(rng: np.random.Generator, n_B) -> dict:
    """Bits uniform; row b: n bits, `=` at n, blanks to 2n - 1, the answer read at n .. 2n - 1."""
    n_B = np.asarray(n_B)
    col_1xT = np.arange(2 * int(n_B.max()))[None, :]
    bits_BxN = ZERO + rng.integers(0, 2, (len(n_B), int(n_B.max())))
    n_Bx1 = n_B[:, None]
    tokens_BxT = np.where(col_1xT < n_Bx1, np.pad(bits_BxN, ((0, 0), (0, int(n_B.max())))), 0)
    tokens_BxT = np.where(col_1xT == n_Bx1, QUERY, np.where((col_1xT > n_Bx1) & (col_1xT < 2 * n_Bx1), BLANK,
                                                             tokens_BxT))
    return {**sequence_answer(tokens_BxT, n_B, bits_BxN, n_B), "hop": n_B.astype(np.int32)}
