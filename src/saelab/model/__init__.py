"""The SAE module: weights, initialization, normalization, and its SAELens/SAEBench site view."""
