"""French prompts and chat templates live as Jinja files next to this module, not in code."""

from functools import cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).parent / "prompts"


@cache
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROMPTS_DIR)), undefined=jinja2.StrictUndefined, autoescape=False
    )


def render_prompt(name: str, **values) -> str:
    """Render data/prompts/<name>.jinja (missing variables are an error)."""
    return _environment().get_template(f"{name}.jinja").render(**values).strip()
