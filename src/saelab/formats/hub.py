"""The Hugging Face Hub: load an SAE from `hf://ORG/REPO[/SUBFOLDER]`, push a folder in the SAELens layout."""

from __future__ import annotations

from pathlib import Path

from saelab.errors import ConfigError, DataError

PREFIX = "hf://"
# What a pushed folder holds: SAELens's two files (what SAELens users load) plus saelab's record and results.
PUSHED_FILES = ["cfg.json", "sae_weights.safetensors", "saelab.json", "eval.json", "metrics.jsonl", "run.json"]


def _hub():
    try:
        import huggingface_hub  # imported only here: loading local folders never needs it
    except ImportError:
        raise ConfigError("hub", "huggingface_hub", "not installed; pip install huggingface_hub") from None
    return huggingface_hub


def parse(address: str) -> tuple[str, str | None]:
    """(repo_id "ORG/REPO", subfolder or None) of an `hf://ORG/REPO[/SUBFOLDER]` address."""
    parts = [p for p in address[len(PREFIX) :].split("/") if p] if address.startswith(PREFIX) else []
    if len(parts) < 2 or any(p in (".", "..") for p in parts):
        raise ConfigError("sae", address, "expected hf://ORG/REPO or hf://ORG/REPO/SUBFOLDER")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def download(address: str) -> Path:
    """The local folder (in the Hub cache) holding the SAE at `address`."""
    repo_id, sub = parse(address)
    hub = _hub()
    try:
        root = Path(hub.snapshot_download(repo_id, allow_patterns=[f"{sub}/*"] if sub else None))
    except Exception as e:  # network, authentication, missing repository: one line naming the address
        raise DataError(
            f"sae={address!r}: download failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    folder = root / sub if sub else root
    if not (folder / "cfg.json").is_file():
        raise DataError(f"sae={address!r}: no cfg.json there (name the subfolder holding the SAE)")
    return folder


def push(folder: str | Path, repo_id: str, subfolder: str | None = None, private: bool = False) -> str:
    """Upload the SAE folder's files to the Hub repository `repo_id` (created if missing); returns its hf:// address."""
    folder = Path(folder)
    if not (folder / "cfg.json").is_file() or not (folder / "sae_weights.safetensors").is_file():
        raise DataError(f"folder={str(folder)!r}: not an SAE folder (needs cfg.json and sae_weights.safetensors)")
    try:
        parse(PREFIX + repo_id)  # ORG/REPO, nothing more
    except ConfigError:
        raise ConfigError("repo", repo_id, "expected ORG/REPO") from None
    if repo_id.count("/") != 1:
        raise ConfigError("repo", repo_id, "expected ORG/REPO")
    hub = _hub()
    try:
        api = hub.HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            path_in_repo=subfolder or None,
            allow_patterns=PUSHED_FILES,
            commit_message="Upload SAE with saelab",
        )
    except Exception as e:  # no network, no token, no permission: one line naming the repository and the cause
        cause = str(e).splitlines()[0][:200] if str(e) else ""
        raise DataError(f"repo={repo_id!r}: push failed ({type(e).__name__}: {cause})") from None
    return PREFIX + repo_id + (f"/{subfolder}" if subfolder else "")
