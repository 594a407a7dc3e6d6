"""Built-in sources: file, command, env."""
