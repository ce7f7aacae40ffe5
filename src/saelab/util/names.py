"""SAE names are folder names: each must be one safe path component, distinct from the others on any file system."""

from __future__ import annotations

import unicodedata

from saelab.errors import ConfigError

MAX_NAME_BYTES = 255  # the longest file name ext4, APFS and NTFS accept


def normalized(name: str) -> str:
    """The form two names must not share: case-insensitive and Unicode-normalized (macOS/Windows see these as one folder)."""
    return unicodedata.normalize("NFKC", name).casefold().rstrip(". ")


def check_folder_name(name: str, field: str = "name") -> None:
    """Raise ConfigError unless `name` is usable as one folder inside the run's output folder."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(field, name, "an SAE name must be a non-empty string")
    if "/" in name or "\\" in name:
        raise ConfigError(field, name, "an SAE name is a folder name and must not contain / or \\")
    if name in (".", "..") or name.startswith("."):
        raise ConfigError(field, name, "an SAE name must not start with '.' (it would leave or hide its folder)")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ConfigError(field, name, "an SAE name must not contain control characters")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ConfigError(field, name[:40] + "…", f"longer than {MAX_NAME_BYTES} bytes, too long for a folder name")


def check_member_names(names: list[str]) -> None:
    """Every name is a safe folder name and no two name the same folder after normalization."""
    seen: dict[str, str] = {}
    for name in names:
        check_folder_name(name)
        key = normalized(name)
        if key in seen:
            other = seen[key]
            why = (
                "two SAEs share this name"
                if other == name
                else f"it names the same folder as {other!r} on case-insensitive file systems"
            )
            raise ConfigError("name", name, f"{why}; set a distinct `name` on each")
        seen[key] = name
