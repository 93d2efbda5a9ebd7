"""Command-line interface (``prefdyn``)."""

from prefdyn.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
