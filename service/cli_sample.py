"""`aeguard sample MODEL.onnx -n N --out FILE`: synthetic rows from a variational autoencoder's file."""

from __future__ import annotations

import argparse

from service.batch.io import output_format
from service.errors import InvalidInputError
from service.sample import generate_chunks, load_generator, write_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the `sample` options."""
    parser.add_argument("model", metavar="MODEL.onnx", help="a model trained with --architecture vae")
    parser.add_argument(
        "-n", "--rows", type=int, required=True, metavar="N", help="how many rows to generate"
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="output file: .csv or .parquet, columns = feature names"
    )
    parser.add_argument("--seed", type=int, default=0, help="same model + seed = same rows (default 0)")


def run(args: argparse.Namespace) -> int:
    """Generate the rows and write them; print one line saying what was written."""
    if args.rows < 1:
        raise InvalidInputError(f"-n must be >= 1, got {args.rows}")
    output_format(args.out)  # refuse a bad extension before loading anything
    generator = load_generator(args.model)
    names = generator.metadata.feature_names
    written = write_rows(generate_chunks(generator, args.rows, args.seed), names, args.out)
    print(
        f"wrote {written} generated rows x {len(names)} features to {args.out} "
        f"(model {generator.metadata.name} {generator.metadata.version}, seed {args.seed})"
    )
    return 0
