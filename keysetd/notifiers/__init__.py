"""Built-in notifiers: signal, command, http."""
