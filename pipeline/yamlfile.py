"""YAML from users (recipes, budgets, --set values), read with limits: a size cap, UTF-8, no
anchors or aliases, and errors that show a short prefix of what was given."""

from __future__ import annotations

from pathlib import Path

import yaml

from ground.errors import UsageError, short

MAX_YAML_BYTES = 1 << 20  # a recipe or budgets file is a few lines


class _Loader(yaml.SafeLoader):
    """safe_load without aliases: ten lines of anchors and aliases can expand to gigabytes
    ("billion laughs"), and a recipe has no need of them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("anchors and aliases (&name, *name) are not accepted")
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader that also refuses aliases
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an integer of 5,000 digits
        raise UsageError(
            f"{where}: not valid YAML ({short(str(e).splitlines()[0], 120)})"
        ) from None


def read_yaml_file(path: str | Path, flag: str):
    """A recipe or budgets file (a pipe such as <(cat b.yaml) too), size-limited, UTF-8."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a YAML file")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot be read ({e.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise UsageError(f"{flag} {path}: larger than {MAX_YAML_BYTES >> 20} MiB; not a recipe")
    try:
        return parse_yaml(raw.decode("utf-8"), f"{flag} {path}")
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not UTF-8 text; save it as UTF-8") from None
