"""`python -m containerdisks`: the same as the `containerdisks` console script."""

from containerdisks.cli import entrypoint

entrypoint()
