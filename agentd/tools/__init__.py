"""Tools: MCP servers the model may call through agentd, never on its own.

settings.py  the [tools] section and [[tools.servers]] tables (stdlib only)
servers.py   one supervised MCP server (the `mcp` SDK, imported after READY)
toolbox.py   the configured servers, and one chat's view: role, policy, approval
loop.py      ask the model, run its calls, send the results back, up to max_steps
"""
