"""The prefix bridge: the projector from a world model's predicted next latent to soft-prompt embeddings
of an LLM (projector.py, read by the transformers and llama.cpp decoders), the reply NLL under a prefix
(scoring.py), the pairs it learns from (data.py), its training (align.py, train.py: train-bridge) and the
measure of its conditioning (evaluate.py: eval-conditioning)."""
