"""`python -m llm4all_recipes <stage> ...` is `llm4all <stage> ...` (so `accelerate launch -m llm4all_recipes`
works)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
