"""The verify flow and its booters: prove a pushed containerdisk boots and accepts an SSH login
with a fresh key (`images verify`, commands/verify.py, runs it)."""
