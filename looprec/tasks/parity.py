"""Parity (Fan et al., 2024): a bit string, then `=`; the answer, read at `=`, is whether the number of ones is odd.
The difficulty is the string's length (see docs/decisions.md for the format and where it differs)."""
import numpy as np

from looprec.tasks import DifficultyTask, SimpleVocab, TaskConfig, register_task

ZERO, ONE, QUERY = 1, 2, 3  # bit b is token 1 + b; the answer is a bit token


@register_task("parity", difficulty="length")
class Parity(DifficultyTask):
  """Bit strings of length d, the answer their parity."""

  vocab = SimpleVocab(("<pad>", "0", "1", "="))
  n_answers = 2

  @staticmethod
  def capacity(cfg: TaskConfig) -> int:
    return cfg.seq_len - 1

  @staticmethod
  def width(difficulty: int) -> int:
    return difficulty + 1

  @staticmethod
  def examples(rng: np.random.Generator, d_B) -> dict:
    """Bits uniform, positions past each row's length padded; the answer read at its `=`."""
    d_B = np.asarray(d_B)
    bits_BxT = rng.integers(0, 2, (len(d_B), int(d_B.max()))) * (np.arange(d_B.max())[None, :] < d_B[:, None])
    tokens_BxT = np.where(np.arange(d_B.max())[None, :] < d_B[:, None], ZERO + bits_BxT, 0)
    tokens_BxT = np.concatenate([tokens_BxT, np.zeros((len(d_B), 1), int)], axis=1)
    tokens_BxT[np.arange(len(d_B)), d_B] = QUERY
    return {"tokens": tokens_BxT.astype(np.int32), "read_pos": d_B.astype(np.int32),
            "target": (ZERO + bits_BxT.sum(1) % 2).astype(np.int32), "hop": d_B.astype(np.int32)}
