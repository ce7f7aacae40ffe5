"""OthelloGPT testbed: rules, random games, board-state labels, the model, probes and metrics.

Modules: engine (slow reference rules), games (vectorized games and labels), model (the GPT),
train_model (its training and legal-move evaluation), probes (linear board-state probes),
auroc (latent-vs-board metrics), harvest (activations with aligned labels), score (the good-classifier
metric of an SAE), boards (plots); the `saelab othello` commands live in saelab.commands.othello. The trained model lives
in assets/ and loads with `saelab.sources.othello.model.load_default_model()`.
"""
