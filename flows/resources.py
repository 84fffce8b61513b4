"""Where the files the job needs at run time are: the dbt project, the dbt profile, the dashboard app.

They travel inside the package: the wheel carries ``dbt_project/`` and
``profiles.yml`` as the data package ``glmm_ab_project`` (``pyproject.toml`` maps
it onto the repository root), and the dashboard as the ``dashboard`` package. An
editable install maps the same names onto the source tree, so a developer's
edits to the models are what runs. ``$GLMM_AB_DBT_PROJECT_DIR`` and
``$GLMM_AB_DBT_PROFILES_DIR`` point dbt at a team's own copies instead.
"""
from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path


class ResourceError(RuntimeError):
    """A file the package should carry is missing (a broken install)."""


def _bundled(name: str) -> Path:
    # The data package has no __init__.py; its search locations are its folders (an
    # editable install adds a path-hook entry that is no folder, which importlib.resources
    # rejects, so the folders are read directly).
    spec = find_spec("glmm_ab_project")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in folders:
        if (folder / name).exists():
            return folder / name
    raise ResourceError(f"the installed glmm-ab lacks {name} (looked in {', '.join(map(str, folders)) or 'no folder'}); "
                        "reinstall the package")


def dbt_project_dir() -> Path:
    """The dbt project to build: ``$GLMM_AB_DBT_PROJECT_DIR`` or the one the package carries."""
    override = os.environ.get("GLMM_AB_DBT_PROJECT_DIR")
    return Path(override) if override else _bundled("dbt_project")


def dbt_profiles_dir() -> Path:
    """The folder holding ``profiles.yml``: ``$GLMM_AB_DBT_PROFILES_DIR`` or the package's own."""
    override = os.environ.get("GLMM_AB_DBT_PROFILES_DIR")
    return Path(override) if override else _bundled("profiles.yml").parent


def dashboard_app() -> Path:
    """The Streamlit script of the dashboard package."""
    spec = find_spec("dashboard")
    if spec is None or spec.origin is None:
        raise ResourceError("the installed glmm-ab lacks its dashboard package; reinstall the package")
    return Path(spec.origin).with_name("app.py")
