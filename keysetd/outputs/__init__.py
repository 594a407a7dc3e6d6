"""Built-in outputs: each turns the planned keyset into the bytes of its files."""
