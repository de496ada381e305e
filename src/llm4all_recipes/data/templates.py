"""French prompts and chat templates live as Jinja files next to this module, not in code.

A recipe names a template the same way for both: a shipped name (data/prompts/<name>.jinja,
data/chat_templates/<name>.jinja) or a .jinja file (`template_file`); the recipe keeps what it was given, so no
machine path reaches recipe.yaml or lineage.json."""

import re
from functools import cache
from pathlib import Path

from .. import paths
from ..errors import RecipeError

PROMPTS_DIR = Path(__file__).parent / "prompts"


def is_shipped_name(value: str) -> bool:
    """A bare name (no .jinja/.j2 suffix, no folder) is a template shipped with the package; anything else a file."""
    return not value.endswith((".jinja", ".j2")) and "/" not in value


def template_file(value: str, shipped: Path) -> Path:
    """The file of a template: a shipped name (`shipped`/<name>.jinja) or a .jinja path."""
    if is_shipped_name(value):
        return shipped / f"{value}.jinja"
    return Path(value)


def missing_template(value: str, shipped: Path, what: str) -> str | None:
    """Why the template `value` (a `what` shipped in `shipped`, or a file) cannot be read; None when it can."""
    path = template_file(value, shipped)
    if path.is_file():
        return None
    if path.parent == shipped and not value.endswith((".jinja", ".j2")):
        names = ", ".join(sorted(p.stem for p in shipped.glob("*.jinja")))
        return f"no shipped {what} named '{value}' (shipped: {names}); or give a .jinja file"
    return f"no such file: {value}"


# --------------------------------------------------------------------------- prompts
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
    if (problem := missing_template(value, PROMPTS_DIR, "prompt")) is not None:
        raise ValueError(problem)
    return value, template_file(value, PROMPTS_DIR).read_text(encoding="utf-8")


def prompt_variables(value: str) -> set[str]:
    """The variables a prompt template reads."""
    import jinja2.meta

    return jinja2.meta.find_undeclared_variables(_environment().parse(prompt_source(value)[1]))


def render_prompt_source(value: str, **values) -> str:
    """Render a prompt given by name or file (missing variables are an error)."""
    if is_shipped_name(value):
        return render_prompt(value, **values)
    return _environment().from_string(prompt_source(value)[1]).render(**values).strip()


# --------------------------------------------------------------------------- chat templates
def has_generation_markers(template: str | None) -> bool:
    """True when a chat template marks assistant spans with {% generation %} (any whitespace control)."""
    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def chat_template_file(value: str) -> Path:
    """The file of a chat template: a shipped name ('chatml') or a .jinja path."""
    return template_file(value, paths.CHAT_TEMPLATES_DIR)


def read_chat_template(value: str) -> str:
    return chat_template_file(value).read_text(encoding="utf-8")


def check_chat_template(value: str, require_generation: bool) -> str:
    """Check that a chat template exists (a shipped name or a file) and has `{% generation %}` markers when needed."""
    if (problem := missing_template(value, paths.CHAT_TEMPLATES_DIR, "chat template")) is not None:
        raise RecipeError(problem, key="chat_template_path")
    if require_generation and not has_generation_markers(read_chat_template(value)):
        raise RecipeError(
            f"{value} has no {{% generation %}} markers, which assistant_only_loss needs "
            "(wrap each assistant message in {% generation %}...{% endgeneration %})",
            key="chat_template_path",
        )
    return value
