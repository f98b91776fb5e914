"""Datasets of the recipe (task A: 2-hop composition, task B: k-hop chains) in the official JSON format."""
from data_gen.chains import chain_space, follow, held_out_chains, is_held_out, permutation_graph, train_chains
from data_gen.composition import SPLITS, TRAIN_SPLITS, CompositionData, make_composition
from data_gen.facts import Facts
from data_gen.io import facts_to_rows, read_dataset, read_vocab, rows_to_facts, write_dataset
from data_gen.vocab import Vocab

__all__ = [
    "SPLITS", "TRAIN_SPLITS", "CompositionData", "Facts", "Vocab", "chain_space", "facts_to_rows", "follow",
    "held_out_chains", "is_held_out", "make_composition", "permutation_graph", "read_dataset", "read_vocab",
    "rows_to_facts", "train_chains", "write_dataset",
]
