"""The Python runtime: a zygote that forks instances, and the instance loop
that loads a FunctionGraph-style `handler(event, context)` and serves it."""
