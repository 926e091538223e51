"""Protocol adapters: bytes on a wire in, readings out. They never import rules."""
