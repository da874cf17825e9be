"""The batch job: score a CSV/Parquet file or dataset with one model, in-process, via a server or on Spark."""
