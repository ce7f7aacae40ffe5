"""OthelloGPT testbed: rules, random games, board-state labels, the model, probes and metrics.

Modules: engine (slow reference rules), games (vectorized games and labels), model (the GPT),
train_model (its training and legal-move evaluation), probes (linear board-state probes),
auroc (latent-vs-board metrics), cli (the `saelab othello` commands). The trained model lives
in assets/ and loads with `saelab.sources.othello.model.load_default_model()`.
"""
