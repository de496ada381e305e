"""The one error type users see: a recipe or a stage input is wrong.

Its message always names where the problem is (the recipe file or the command line, the key, the line
when known), so the CLI prints it on one line and exits with status 2, before any model is loaded.
"""


class RecipeError(Exception):
    """A recipe, a command-line override or a stage input is invalid."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.source = source
        self.key = key
        self.line = line

    def located(self, source: str | None = None, line: int | None = None) -> "RecipeError":
        """Fill in the location when the raiser did not know it (keeps what it knew)."""
        if self.source is None:
            self.source = source
        if self.line is None:
            self.line = line
        return self

    def __str__(self) -> str:
        where = self.source or "recipe"
        if self.line is not None:
            where += f":{self.line}"
        if self.key is not None:
            where += f": key '{self.key}'"
        return f"{where}: {self.message}"
