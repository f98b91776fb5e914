"""looprec: recurrent-depth (looped) transformers in JAX.

    import jax
    from looprec import ChainDataConfig, ModelConfig, build_model, make_task, sweep, halt, margins
    task = make_task(ChainDataConfig(n_entities=8, n_relations=2, seq_len=8, n_eval=32))  # chains on a tiny graph
    splits = {f"{hop}hop_test": task.eval_split(hop) for hop in (2, 3)}  # tokens, read_pos, target, n_answers
    tokens_BxT, read_pos_B = splits["3hop_test"]["tokens"], splits["3hop_test"]["read_pos"]
    model = build_model(ModelConfig(kind="looped", d_model=32, n_heads=2, n_layers=1), task.vocab.size)  # config.KINDS
    params = model.init(jax.random.PRNGKey(0))
    logits_BxTxV = model.apply(params, tokens_BxT, n_loops=8)
    per_loop_RxBxV = model.loop_logits(params, tokens_BxT, read_pos_B, n_loops=16)  # the answer after every loop
    acc = sweep(model, params, splits, max_loops=20)             # accuracy[split][R], one compile
    table = halt(model, params, splits, "kl_entropy")            # adaptive halting per split
    curves = margins(model, params, splits, n_loops=50)          # overthinking: margin per loop

For notebooks and scripts (see notebooks/):

    from looprec import experiment, make_mesh, on_eval, logit_lens, HALTING_RULES
    mesh = make_mesh()                                  # one `data` axis over every device
    with on_eval(lambda model, step, accuracy: print(model, step, accuracy)):  # after every training evaluation
      run_dir = experiment.run("systematicity", "smoke")
    run = experiment.load_run(run_dir)                  # its config, task (splits, probes, vocab) and params
    lens = logit_lens(run.model("looped"), run.params["looped"], run.task.probes, n_loops=4)  # bridge / answer
    HALTING_RULES["kl_entropy"]                         # name -> default parameters of each halting rule

Looped models that generate (notebooks/decoding.ipynb; `make experiment NAME=decoding` trains one):

    from looprec import GenerationTask, generate, generate_halting, bytes_per_token, path_accuracy
    run = experiment.load_run(experiment.run("decoding", "smoke"))  # a per-loop-cache model, MELT trained from it
    model, params = run.model("per_loop"), run.params
    chains = GenerationTask(run.cfg.data).eval_split(2)  # held-out 2-hop chains: prompt (head, relations), path
    written_BxK = generate(model, params["melt"], chains["prompt"], 2, n_loops=2, policy="melt")  # greedy
    scores = path_accuracy(written_BxK, chains["path"])  # {"path": whole path right, "final": last entity right}
    memory = [bytes_per_token(model, p, 32) for p in ("per_loop", "cycle:4", "melt")]  # KV bytes per token, R=32
    tokens_BxK, loops_BxK = generate_halting(model, params["per_loop"], chains["prompt"], 2, cap=8)  # R per token
"""
import importlib

# name -> (module, attribute): imported on first use, so that `import looprec.files` (data_gen's writer and parser)
# pulls in no jax, and the CLI's error paths do not wait for matplotlib, orbax and grain.
LAZY = {
    **{name: ("looprec.config", name) for name in ("ChainDataConfig", "CompositionDataConfig", "ConfigError",
                                                   "EvalConfig", "ModelConfig", "ModelRun", "Recurrence",
                                                   "TrainConfig")},
    "LoopedModel": ("looprec.models", "LoopedModel"), "build_model": ("looprec.models", "build"),
    "LoopedTransformer": ("looprec.models.looped", "LoopedTransformer"),
    "sweep": ("looprec.eval", "sweep"), "halt": ("looprec.analysis", "halt"),
    "margins": ("looprec.analysis", "margins"), "logit_lens": ("looprec.lens", "logit_lens"),
    "on_eval": ("looprec.train", "on_eval"), "make_mesh": ("looprec.sharding", "make_mesh"),
    "make_task": ("looprec.tasks", "make_task"), "HALTING_RULES": ("looprec.halting", "RULES"),
    **{name: ("looprec.decode", name) for name in ("generate", "generate_halting", "bytes_per_token")},
    **{name: ("looprec.generation", name) for name in ("GenerationTask", "path_accuracy")}}
__all__ = sorted(LAZY)


def __getattr__(name):
  if name in LAZY:
    module, attr = LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'looprec' has no attribute {name!r}")
