"""A tiny MCP server over stdio, for the tests: what an operator would configure in
MCP_STDIO_SERVERS (tests/test_assistant_tools.py starts it as the platform does, as a process)."""

from mcp.server.mcpserver import MCPServer

server: MCPServer = MCPServer("calculator")


@server.tool()
def add(a: int, b: int) -> str:
    """Add two whole numbers."""
    return str(a + b)


if __name__ == "__main__":
    server.run("stdio")
