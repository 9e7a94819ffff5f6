"""Tools the model can call: built-in python and browser, user function tools and MCP servers.

Tools take harmony-level calls in and give text out; they never draw or ask (approval and display
go through callbacks owned by the session's caller).
"""
