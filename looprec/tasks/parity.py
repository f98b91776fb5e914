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

  def examples(self, rng: np.random.Generator, d_B) -> dict:
    """Bits uniform, positions past each row's length padded; the answer read at its `=`; with
    data.running_parity, `targets` the parity of the bits so far at every bit and the answer at `=`."""
    d_B = np.asarray(d_B)
    rows_B, inside_BxT = np.arange(len(d_B)), np.arange(d_B.max())[None, :] < d_B[:, None]
    bits_BxT = rng.integers(0, 2, (len(d_B), int(d_B.max()))) * inside_BxT
    tokens_BxT = np.concatenate([np.where(inside_BxT, ZERO + bits_BxT, 0), np.zeros((len(d_B), 1), int)], axis=1)
    tokens_BxT[rows_B, d_B] = QUERY
    answer_B = ZERO + bits_BxT.sum(1) % 2
    out = {"tokens": tokens_BxT.astype(np.int32), "read_pos": d_B.astype(np.int32),
           "target": answer_B.astype(np.int32), "hop": d_B.astype(np.int32)}
    if not self.cfg.running_parity:
      return out
    targets_BxT = np.concatenate([np.where(inside_BxT, ZERO + np.cumsum(bits_BxT, 1) % 2, 0),
                                  np.zeros((len(d_B), 1), int)], axis=1)
    targets_BxT[rows_B, d_B] = answer_B
    return {**out, "targets": targets_BxT.astype(np.int32)}
