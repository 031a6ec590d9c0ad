"""Commands: see voicelab.cli.main.COMMAND_MODULES."""

commands: list = []
