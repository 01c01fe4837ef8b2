from vqf.cli import entry

entry()
