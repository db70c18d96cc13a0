"""Where gtnpipe finds the data it ships (device profiles, recipes, latency tables) and where users' own data goes.

Shipped data. The repository keeps `device_profiles/` and `recipes/` at its top level, where users look for
them and edit them; pyproject.toml maps them into the wheel as the data folders `gtnpipe/device_profiles` and
`gtnpipe/recipes` (`[tool.setuptools.package-dir]`), so an installed gtnpipe reads them from its own package
with `importlib.resources`. An editable install (`pip install -e .`, what `make setup` runs) puts no copy
anywhere: setuptools' editable finder maps importable packages only, and a data folder without `__init__.py`
outside `gtnpipe/` is not one (importing `gtnpipe.device_profiles` fails there), so a checkout's folders are
read where they are, beside the package. Both cases are plain folders on disk: the functions return `Path`s
(a gtnpipe imported from a zip file is not supported; pip never installs one).

User data. What a user measures (latency tables from `gtnpipe latency-table`) goes to the user data
directory (platformdirs: ~/.local/share/gtnpipe on Linux), or to `$GTNPIPE_DATA_DIR` when that is set (tests,
a shared team folder). It is searched before the shipped data, and nothing is ever written into the installed
package (site-packages may be read-only, and a reinstall would lose it).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import platformdirs

from gtnpipe.errors import ConfigError

__all__ = ["DATA_DIR_ENV", "shipped_dir", "user_data_dir"]

DATA_DIR_ENV = "GTNPIPE_DATA_DIR"


def shipped_dir(name: str) -> Path:
    """The folder of shipped data `name` ("device_profiles" or "recipes"): in the installed package, else the checkout's."""
    package = resources.files("gtnpipe")
    candidates = []
    if isinstance(package, Path):  # a package installed as files (a wheel, an editable install, a checkout)
        installed = package / name
        if installed.is_dir():
            return installed
        candidates.append(installed)
        # an editable install or a checkout on sys.path: the repository's top-level folder (pyproject.toml beside it
        # tells a checkout from a site-packages folder that happens to hold a folder of that name)
        checkout = package.parent
        if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
            return checkout / name
        candidates.append(checkout / name)
    raise ConfigError(f"gtnpipe's shipped {name.replace('_', ' ')} are missing (looked in "
                      f"{', '.join(map(str, candidates)) or package}): this gtnpipe was installed without its data; "
                      "reinstall it from a wheel built by 'pip wheel' (or 'pip install -e .' in a checkout)")


def user_data_dir() -> Path:
    """Where a user's own data goes: `$GTNPIPE_DATA_DIR`, else the platform's user data directory for gtnpipe."""
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override).expanduser() if override else platformdirs.user_data_path("gtnpipe", appauthor=False)
