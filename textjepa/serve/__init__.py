"""The OpenAI-compatible HTTP API: `create_app(agent_or_loader, config)` in `textjepa.serve.app`."""
