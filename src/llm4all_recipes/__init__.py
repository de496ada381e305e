"""llm4all-recipes: keep open LLMs up to date cheaply (compress, distil, continue pretraining, fine-tune).

Importing the package is cheap: heavy libraries (torch, transformers, TRL, lighteval) load in the
stages that need them.
"""

__version__ = "0.1.0"
