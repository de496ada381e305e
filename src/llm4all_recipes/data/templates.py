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


def prompt_source(value: str) -> tuple[str, str]:
    """(name, template text) of a prompt given as a shipped name (data/prompts/<name>.jinja) or a .jinja file."""
    path = Path(value)
    if value.endswith((".jinja", ".j2")):
        if not path.is_file():
            raise ValueError(f"no such file: {value}")
        return value, path.read_text(encoding="utf-8")
    shipped = PROMPTS_DIR / f"{value}.jinja"
    if not shipped.is_file():
        names = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.jinja")))
        raise ValueError(f"no shipped prompt named '{value}' (shipped: {names}); or give a .jinja file")
    return value, shipped.read_text(encoding="utf-8")


def prompt_variables(value: str) -> set[str]:
    """The variables a prompt template reads."""
    import jinja2.meta

    return jinja2.meta.find_undeclared_variables(_environment().parse(prompt_source(value)[1]))


def render_prompt_source(value: str, **values) -> str:
    """Render a prompt given by name or file (missing variables are an error)."""
    if not value.endswith((".jinja", ".j2")):
        return render_prompt(value, **values)
    return _environment().from_string(prompt_source(value)[1]).render(**values).strip()
