"""Any Hugging Face causal LM: loading (offline GGUF too), text streams, harvests."""
