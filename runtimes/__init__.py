"""Code that runs inside a function instance, one folder per language.

`runtimes.protocol` holds the wire frames shared by the daemon and every
runtime; the daemon imports it, runtimes never import the daemon.
"""
