#!/usr/bin/env python3
"""Sign model version folders of your own (a Hugging Face Optimum export,
say) so that weir-engine loads them.

    python backend-engine/models/sign.py --new-key KEYS       # KEYS/signing.key (0600) + KEYS/models.pub
    python backend-engine/models/sign.py --key KEYS/signing.key REPO/<model>/<version> ...

Each folder gets a manifest.json covering every file in it (model.onnx,
model.toml, tokenizer.json, chat_template.jinja, ...), signed with the key;
the model name and version are the folder's parent's name and its own.
The manifest is verified against the public key before the script ends.
Start the engine with --public-key KEYS/models.pub. Sign again after any
change to any file of the folder: the engine refuses a folder whose files
do not match their manifest. The format: docs/model-repository.md.
Needs the `cryptography` package (in .venv, scripts/setup-python.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from buildlib import manifest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-key", type=Path, metavar="DIR", help="make a keypair in DIR (refuses to overwrite)")
    parser.add_argument("--key", type=Path, help="the private key file (signing.key) to sign with")
    parser.add_argument("folders", type=Path, nargs="*", help="version folders: REPO/<model>/<version>")
    args = parser.parse_args()
    if args.new_key:
        private, public = args.new_key / "signing.key", args.new_key / "models.pub"
        if private.exists() or public.exists():
            parser.error(f"{args.new_key} already holds a key; refusing to overwrite it")
        key = manifest.new_key()
        manifest.write_private(private, key)
        manifest.write_public(public, manifest.raw_public(key))
        print(f"wrote {private} and {public}")
    if not args.folders:
        return 0
    if args.key is None:
        parser.error("--key is required to sign folders")
    key = manifest.read_private(args.key)
    failed = False
    for folder in args.folders:
        folder = folder.resolve()
        if not (folder / "model.toml").is_file():
            print(f"{folder}: no model.toml; not a version folder", file=sys.stderr)
            failed = True
            continue
        model, version = folder.parent.name, folder.name
        manifest.sign(folder, model, version, key)
        problems = manifest.verify(folder, model, version, manifest.raw_public(key))
        for p in problems:
            print(p, file=sys.stderr)
        failed |= bool(problems)
        if not problems:
            print(f"signed {model}/{version} ({len(manifest.version_files(folder))} files)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
