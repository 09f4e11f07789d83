from vmkit.cli import entry

entry()
