"""Binary addition (Fan et al., 2024): a + b = with n bits each (most significant first, leading zeros allowed),
then blanks; the answer, the n + 1 bits of the sum (most significant first, the carry bit included), is read all
at once (not generated) from `=` on. The difficulty is n (see docs/decisions.md for the format and where it
differs)."""
import numpy as np

from looprec.tasks import DifficultyTask, SimpleVocab, TaskConfig, register_task, sequence_answer

ZERO, PLUS, QUERY, BLANK = 1, 3, 4, 5  # bit b is token 1 + b


def binary_sum(a_BxN, b_BxN) -> np.ndarray:
  """The bits of a + b, B x (N + 1), for bit rows most significant first (0 / 1)."""
  sum_BxM = np.zeros((a_BxN.shape[0], a_BxN.shape[1] + 1), np.int64)
  carry_B = np.zeros(a_BxN.shape[0], np.int64)
  for j in range(a_BxN.shape[1] - 1, -1, -1):
    total_B = a_BxN[:, j] + b_BxN[:, j] + carry_B
    sum_BxM[:, j + 1], carry_B = total_B % 2, total_B // 2
  sum_BxM[:, 0] = carry_B
  return sum_BxM


@register_task("addition", difficulty="length", answer="sequence")
class Addition(DifficultyTask):
  """Two n-bit numbers, answered by the n + 1 bits of their sum."""

  vocab = SimpleVocab(("<pad>", "0", "1", "+", "=", "_"))
  n_answers = 2

  @staticmethod
  def capacity(cfg: TaskConfig) -> int:
    return (cfg.seq_len - 2) // 3

  @staticmethod
  def width(difficulty: int) -> int:
    return 3 * difficulty + 2

  @staticmethod
  def answer_length(difficulty: int) -> int:
    return difficulty + 1

  @staticmethod
  def examples(rng: np.random.Generator, n_B) -> dict:
    """Bits uniform; row b: a at 0 .. n - 1, `+`, b at n + 1 .. 2n, `=` at 2n + 1, blanks to 3n + 1; the sum read
    at 2n + 1 .. 3n + 1."""
    n_B, n_max = np.asarray(n_B), int(np.max(n_B))
    short_BxN = np.arange(n_max)[None, :] < (n_max - n_B)[:, None]  # right-aligned: leading columns unused
    a_BxN, b_BxN = (np.where(short_BxN, 0, rng.integers(0, 2, (len(n_B), n_max))) for _ in range(2))
    sum_BxM = binary_sum(a_BxN, b_BxN)
    left_BxM = np.minimum(n_max - n_B[:, None] + np.arange(n_max + 1)[None, :], n_max)  # row b's bits from 0
    col_1xT, n_Bx1 = np.arange(3 * n_max + 2)[None, :], n_B[:, None]
    a_BxT = np.take_along_axis(a_BxN, np.minimum(left_BxM[:, :n_max], n_max - 1), 1)
    b_BxT = np.take_along_axis(b_BxN, np.minimum(left_BxM[:, :n_max], n_max - 1), 1)
    tokens_BxT = np.zeros((len(n_B), 3 * n_max + 2), np.int64)
    rows, cols = np.nonzero(np.arange(n_max)[None, :] < n_Bx1)  # bit j of row b, for j < n_b
    tokens_BxT[rows, cols] = ZERO + a_BxT[rows, cols]
    tokens_BxT[rows, n_B[rows] + 1 + cols] = ZERO + b_BxT[rows, cols]
    rows_B = np.arange(len(n_B))
    tokens_BxT[rows_B, n_B] = PLUS
    tokens_BxT[rows_B, 2 * n_B + 1] = QUERY
    tokens_BxT = np.where((col_1xT > 2 * n_Bx1 + 1) & (col_1xT <= 3 * n_Bx1 + 1), BLANK, tokens_BxT)
    answer_BxM = ZERO + np.take_along_axis(sum_BxM, left_BxM, 1)
    return {**sequence_answer(tokens_BxT, 2 * n_B + 1, answer_BxM, n_B + 1), "hop": n_B.astype(np.int32)}
