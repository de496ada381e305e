"""Evaluation: perplexity, ROUGE (French-aware), lighteval tasks, forgetting reports."""
