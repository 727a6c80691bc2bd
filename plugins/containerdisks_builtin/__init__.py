"""The built-in sources, registered through the `containerdisks.plugins` entry-point group.

They import only `containerdisks.api`, exactly as a third-party plugin would.
"""
