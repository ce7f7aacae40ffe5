"""Where activations come from: the embedded OthelloGPT testbed and any Hugging Face causal LM."""
