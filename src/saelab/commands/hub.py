"""`saelab push`: upload an SAE folder to the Hugging Face Hub in the SAELens layout."""

from __future__ import annotations

from saelab.formats.hub import push


def register(sub) -> None:
    """Add `push` to the top-level subparsers."""
    p = sub.add_parser("push", help="upload an SAE folder to the Hugging Face Hub (SAELens loads it from there)")
    p.add_argument("folder", help="SAE folder (cfg.json + sae_weights.safetensors)")
    p.add_argument("repo", help="ORG/REPO on the Hub (created if missing)")
    p.add_argument("--subfolder", help="path inside the repository (several SAEs in one repository)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.set_defaults(func=cmd_push)


def cmd_push(args) -> int:
    """Upload and print the hf:// address saelab.load reads back."""
    print(push(args.folder, args.repo, subfolder=args.subfolder, private=args.private))
    return 0
