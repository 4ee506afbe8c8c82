"""The onsite-offsite graph and its knowledge-graph embeddings (TransE, TransR, TransRA)."""
