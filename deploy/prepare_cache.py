"""Init step of a deployment: build what a federation needs into the shared cache volume.

    python /app/deploy/prepare_cache.py /etc/fedmkt/federation.yaml [--only NAME]

For every participant of the config (or only participant NAME: a Kubernetes pod's init
container fills its own cache): its builtin model (tiny models are built from their
config, packaged pretrained ones converted from GGUF once) and its builtin tokenizer, into
``$FEDMKT_HOME`` (``/var/lib/fedmkt/cache`` in the image). Idempotent: what is there already is
kept, so a second start costs seconds. Models given as folders or hub ids are left alone (mount
them yourself; see docs/deploy.md). Exits non-zero with one clear line when something cannot be
built, so that `depends_on: service_completed_successfully` keeps the services from starting.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from fedmkt.config import FederationConfigError, load_federation_config
    from fedmkt.models.registry import BUILTIN_MODELS, builtin_model_path
    from fedmkt.models.tokenizers import BUILTIN_TOKENIZERS, tokenizer_path
    from fedmkt.paths import cache_home

    args = list(argv)
    only = None
    if "--only" in args:
        at = args.index("--only")
        if at + 1 >= len(args):
            print("error: --only needs a participant name", file=sys.stderr)
            return 2
        only = args[at + 1]
        del args[at:at + 2]
    path = Path(args[0] if args else "/etc/fedmkt/federation.yaml")
    try:
        config = load_federation_config(path)
    except FederationConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [p for p in config.participants if only is None or p.name == only]
    if not chosen:
        names = ", ".join(p.name for p in config.participants)
        print(f"error: no participant {only!r} in {path}; participants: {names}",
              file=sys.stderr)
        return 2
    print(f"preparing {cache_home()} for {config.name} ({path}): "
          f"{', '.join(p.name for p in chosen)}", flush=True)
    models = sorted({p.model for p in chosen if p.model in BUILTIN_MODELS})
    tokenizers = sorted(
        {p.tokenizer or BUILTIN_MODELS[p.model].tokenizer for p in chosen
         if p.model in BUILTIN_MODELS} | {p.tokenizer for p in chosen
                                          if p.tokenizer in BUILTIN_TOKENIZERS})
    try:
        for name in tokenizers:
            started = time.perf_counter()
            folder = tokenizer_path(name)
            print(f"tokenizer {name}: {folder} ({time.perf_counter() - started:.1f} s)",
                  flush=True)
        for name in models:
            started = time.perf_counter()
            folder = builtin_model_path(name)
            print(f"model {name}: {folder} ({time.perf_counter() - started:.1f} s)", flush=True)
    except Exception as exc:  # noqa: BLE001 - one line for the init container's log
        print(f"error: cannot prepare the cache: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    others = [p.model for p in chosen if p.model not in BUILTIN_MODELS]
    if others:
        print(f"not builtin, left to the participants: {', '.join(sorted(set(others)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
