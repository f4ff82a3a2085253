from fgd.cli import entry

entry()
