"""The paper's two tasks as registered tasks: k-hop chains (depth extrapolation) and 2-hop composition
(systematicity), each read from its own data config (looprec/data.py builds them)."""
from looprec import data
from looprec.config import ChainDataConfig, CompositionDataConfig
from looprec.tasks import register_task

register_task("chains", "hops", ChainDataConfig)(data.make_task)
register_task("composition", "hops", CompositionDataConfig)(data.make_task)
