"""containerdisks: keeps a container registry full of up-to-date KubeVirt containerdisks.

The package is the core; it knows no distribution by name. Sources come from plugins registered
under the `containerdisks.plugins` entry-point group (see `containerdisks.api`).
"""

__version__ = "0.1.0"
