"""`images verify`: prove a pushed containerdisk boots and accepts an SSH login with a fresh key."""
