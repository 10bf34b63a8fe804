"""Evaluation: captioned datasets and their loaders, the synthetic set, recall@k and the recall
benchmark. Import the modules themselves (`retrieval.eval.datasets`, `.recall`, `.bench`)."""
