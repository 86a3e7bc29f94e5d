"""The policy: backbone tokens in, an action chunk and how many of its actions to execute out."""
