"""Building containerdisks: the streaming stages and the image, config and index assembly."""
