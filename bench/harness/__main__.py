"""`python -m bench.harness [options]`: the same as `posflow bench`."""

import typer

from cli.bench import bench

if __name__ == "__main__":
    typer.run(bench)
