"""Data: dataset mixtures, dataset builders, chat templates and French prompts."""
