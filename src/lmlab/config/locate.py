"""Where the Hydra config tree lives, for a checkout and for an installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def config_dir() -> Path:
    """Return the directory holding ``train.yaml`` and the config groups.

    A wheel carries the tree inside the package (``lmlab/_conf``); an editable install or a plain checkout
    reads the top-level ``conf/`` directly, so edits there take effect without reinstalling.
    """
    packaged = _PACKAGE_DIR / "_conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    checkout = _PACKAGE_DIR.parent.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    raise FileNotFoundError(
        f"lmlab's config tree was not found: looked in {packaged} (installed wheel) and {checkout} "
        "(checkout). Reinstall lmlab (`pip install .`) or run from a checkout."
    )


def project_root() -> Path | None:
    """The checkout root when running from one (has conf/ and pyproject.toml), else None."""
    root = _PACKAGE_DIR.parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf").is_dir() else None
