"""Corpus-scale extraction on Ray Data.

``SenerPredictor`` is a callable class for ``Dataset.map_batches``: each actor loads the model
once, sets the Rust thread pool to its CPU share (``RAYON_NUM_THREADS``, before the first model
call), and turns a text column into an entities column (Arrow ``list<struct<start: int64,
end: int64, label: string, score: float, text: string>>``), keeping every other column (the
document id) as it is.

    import ray, sener.ray
    ds = ray.data.read_json("docs.jsonl")
    out = ds.map_batches(sener.ray.SenerPredictor, fn_constructor_kwargs={"model": "models/mine"},
                         compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                         batch_size=16, batch_format="pyarrow")

The command line runs the same over a folder of text files or JSON lines / Parquet with an id and
a text column; the driver streams the results into one JSON lines or Parquet file (each input
document exactly once, with its id) and prints documents/s and words/s:

    python -m sener.ray --model M --input 'docs/*.txt' --output out.jsonl --address auto

The model folder must exist at the same path on every node (or be a Hub id). With
``--record-node`` each row also says which node and actor processed it and how many models that
actor's process had loaded (``sener_node``, ``sener_actor``, ``sener_loads``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
import time
from typing import Any

import pyarrow as pa

from . import load, loads_in_this_process

ENTITY = pa.struct(
    [("start", pa.int64()), ("end", pa.int64()), ("label", pa.string()), ("score", pa.float32()), ("text", pa.string())]
)
ENTITIES = pa.list_(ENTITY)


class SenerPredictor:
    """Loads the model once per actor; ``__call__`` maps a batch (a ``pyarrow.Table``, a pandas
    DataFrame or a dict of columns) to the same batch with ``output_column`` added."""

    def __init__(
        self,
        model: str,
        text_column: str = "text",
        output_column: str = "entities",
        threshold: float | None = None,
        flat: bool = False,
        num_threads: int | None = None,
        record_node: bool = False,
    ) -> None:
        threads = num_threads or _cpu_share()
        if threads:
            # The Rust thread pool starts at the first model call: set its size before loading.
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        self.extractor = load(model)
        self.text_column = text_column
        self.output_column = output_column
        self.threshold = threshold
        self.flat = flat
        self.record_node = record_node
        self.node_id = _node_id()
        self.actor_id = f"{self.node_id}:{os.getpid()}"

    def __call__(self, batch: Any) -> Any:
        table = _to_table(batch)
        texts = [t if t is not None else "" for t in table.column(self.text_column).to_pylist()]
        results = self.extractor.extract_batch(texts, threshold=self.threshold, flat=self.flat, batch_size=max(1, len(texts)))
        table = table.append_column(self.output_column, pa.array(results, type=ENTITIES))
        if self.record_node:
            table = table.append_column("sener_node", pa.array([self.node_id] * table.num_rows, type=pa.string()))
            table = table.append_column("sener_actor", pa.array([self.actor_id] * table.num_rows, type=pa.string()))
            loads = loads_in_this_process()
            table = table.append_column("sener_loads", pa.array([loads] * table.num_rows, type=pa.int64()))
        return table


def _cpu_share() -> int | None:
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        return max(1, int(round(cpus))) if cpus else None
    except Exception:
        return None


def _node_id() -> str:
    try:
        import ray

        if not ray.is_initialized():
            return "local"
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return "local"


def _to_table(batch: Any) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, dict):
        return pa.table({k: list(v) for k, v in batch.items()})
    return pa.Table.from_pandas(batch, preserve_index=False)


def _read(args: argparse.Namespace):
    import ray

    if os.path.isdir(args.input):
        files = sorted(os.path.join(r, f) for r, _, fs in os.walk(args.input) for f in fs if not f.startswith("."))
    elif any(c in args.input for c in "*?["):
        files = sorted(glob.glob(args.input, recursive=True))
    else:
        files = [args.input] if os.path.exists(args.input) else []
    if not files:
        raise SystemExit(f"error: {args.input}: no such file, folder or matching files")
    fmt = args.input_format or _guess_format(files[0])
    if fmt == "text":
        rows, seen = [], {}
        for f in files:
            doc_id = os.path.splitext(os.path.basename(f))[0]
            if doc_id in seen:
                raise SystemExit(f"error: {f}: document id {doc_id!r} also comes from {seen[doc_id]}")
            seen[doc_id] = f
            try:
                with open(f, encoding="utf-8") as fh:
                    text = fh.read(args.max_input_bytes + 1)
            except UnicodeDecodeError as e:
                raise SystemExit(f"error: {f}: not UTF-8 text ({e})")
            if len(text.encode("utf-8")) > args.max_input_bytes:
                raise SystemExit(f"error: {f}: larger than --max-input-bytes {args.max_input_bytes}")
            rows.append({args.id_column: doc_id, args.text_column: text})
        return ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), args.blocks))), len(rows)
    if fmt == "jsonl":
        ds = ray.data.read_json(files, lines=True, override_num_blocks=args.blocks)
    elif fmt == "parquet":
        ds = ray.data.read_parquet(files, override_num_blocks=args.blocks)
    else:
        raise SystemExit(f"error: --input-format {fmt}: expected text, jsonl or parquet")
    for col in (args.id_column, args.text_column):
        if col not in ds.columns():
            raise SystemExit(f"error: {args.input}: no column {col!r} (columns: {', '.join(ds.columns())})")
    return ds, ds.count()


def _guess_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}.get(ext, "text")


def _words(text: str) -> int:
    return len(text.split())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sener.ray", description="Entities of a whole corpus with a sener model on a Ray cluster.")
    p.add_argument("--model", required=True, help="model folder (at the same path on every node) or Hugging Face Hub id")
    p.add_argument("--input", required=True, help="a folder, a file, or a glob ('docs/*.txt'); text files, JSON lines or Parquet")
    p.add_argument("--input-format", choices=["text", "jsonl", "parquet"], help="default: from the first file's extension")
    p.add_argument("--output", required=True, help="output file (.jsonl or .parquet) or folder (DIR/entities.jsonl); one row per document")
    p.add_argument("--output-format", choices=["jsonl", "parquet"], help="default: from --output's extension, else jsonl")
    p.add_argument("--address", default=None, help="Ray cluster address (auto: the running cluster; default: start a local one)")
    p.add_argument("--id-column", default="id", help="the document id column [id]; text files: the file name without extension")
    p.add_argument("--text-column", default="text", help="the text column [text]")
    p.add_argument("--concurrency", type=int, default=None, help="most model actors (default: the cluster's CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor, also its compute threads [1]")
    p.add_argument("--batch-size", type=int, default=4, help="documents per model call [4]")
    p.add_argument("--blocks", type=int, default=64, help="blocks the input is split into [64]")
    p.add_argument("--threshold", type=float, default=None, help="one threshold for every type (default: the model's)")
    p.add_argument("--flat", action="store_true", help="no nested entities")
    p.add_argument("--max-input-bytes", type=int, default=1 << 30, help="largest text file read [1 GiB]")
    p.add_argument("--record-node", action="store_true", help="add the node, actor and model loads of each row")
    args = p.parse_args(argv)
    for name, v, lo in [("--batch-size", args.batch_size, 1), ("--blocks", args.blocks, 1), ("--max-input-bytes", args.max_input_bytes, 1)]:
        if v < lo:
            p.error(f"{name} must be at least {lo}")
    if args.concurrency is not None and args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    if not args.cpus_per_actor > 0:
        p.error("--cpus-per-actor must be positive")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error("--threshold must be in [0, 1]")
    ext = os.path.splitext(args.output)[1].lower()
    out_fmt = args.output_format or {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}.get(ext, "jsonl")
    if ext not in (".parquet", ".jsonl", ".json"):
        # a folder: the results go to DIR/entities.jsonl (or .parquet)
        args.output = os.path.join(args.output, f"entities.{out_fmt}")

    import ray

    ray.init(address=args.address, log_to_driver=False, include_dashboard=False, logging_level="ERROR")
    ds, n_docs = _read(args)
    most = args.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1) // args.cpus_per_actor))
    out = ds.map_batches(
        SenerPredictor,
        fn_constructor_kwargs={
            "model": args.model,
            "text_column": args.text_column,
            "threshold": args.threshold,
            "flat": args.flat,
            "record_node": args.record_node,
            "num_threads": max(1, int(args.cpus_per_actor)),
        },
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most),
        num_cpus=args.cpus_per_actor,
        batch_size=args.batch_size,
        batch_format="pyarrow",
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".partial"
    t0 = time.monotonic()
    docs = words = 0
    seen: set[str] = set()
    writer = None
    with open(tmp, "w", encoding="utf-8") if out_fmt == "jsonl" else contextlib.nullcontext() as fh:
        for table in out.iter_batches(batch_format="pyarrow", batch_size=None):
            ids = table.column(args.id_column).to_pylist()
            for i in ids:
                if str(i) in seen:
                    raise SystemExit(f"error: document id {i!r} appears twice in the input")
                seen.add(str(i))
            docs += table.num_rows
            words += sum(_words(t or "") for t in table.column(args.text_column).to_pylist())
            table = table.drop_columns([args.text_column])
            if out_fmt == "jsonl":
                for row in table.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                import pyarrow.parquet as pq

                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
    if writer is not None:
        writer.close()
    elif out_fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(pa.table({args.id_column: pa.array([], pa.string()), "entities": pa.array([], ENTITIES)}), tmp)
    if docs != n_docs:
        raise SystemExit(f"error: {n_docs} documents in, {docs} out")
    os.replace(tmp, args.output)
    secs = time.monotonic() - t0
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    print(
        f"{docs} documents, {words} words in {secs:.1f} s on {nodes} node(s): "
        f"{docs / secs:.2f} documents/s, {words / secs:.0f} words/s -> {args.output}",
        file=sys.stderr,
    )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
