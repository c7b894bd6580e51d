"""python -m agentd.tools: the built-in read-only tools as an MCP stdio server."""

from agentd.tools.builtin import main

main()
