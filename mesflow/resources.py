"""Files mesflow ships besides code: migrations (sql/), the example plant (config/).

In a source checkout they sit at the top of the tree, where the layout puts them. An
installed wheel carries them inside the package (`mesflow/_data/`, see pyproject.toml).
A missing folder is an error naming both places, never an empty list of migrations.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

# The parent of the mesflow package: the source checkout, when running from one.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


class MissingResource(RuntimeError):
    pass


def resource_dir(name: str) -> Path:
    """The folder `name` ("sql", "config") of this installation."""
    packaged = files("mesflow").joinpath("_data", name)
    with as_file(packaged) as path:  # a real path for a package on disk (wheel install)
        if path.is_dir():
            return Path(path)
    checkout = SOURCE_ROOT / name
    if checkout.is_dir():
        return checkout
    raise MissingResource(
        f"mesflow's {name}/ folder is missing (looked in {path} and {checkout}): "
        "the installation is incomplete, reinstall mesflow"
    )


def is_source_checkout() -> bool:
    """True when mesflow runs from its source tree (editable install or PYTHONPATH)."""
    return (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "mesflow").is_dir()


def example_plant() -> Path:
    return resource_dir("config") / "plant.example.yaml"
