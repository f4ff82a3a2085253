"""Issue 13: the Node.js runtime (instance.js) and its Python keeper."""
