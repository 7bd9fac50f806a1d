"""The control socket: the aiohttp server, the client the CLI uses, and the CLI's work over it."""
