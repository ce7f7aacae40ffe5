"""SAE folders on disk: saelab's own, foreign ones (SAELens, sparsify), and the Hugging Face Hub."""
