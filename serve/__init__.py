"""`pi0edge serve`: a bundle behind openpi's websocket policy protocol, so an unmodified
`openpi_client.websocket_client_policy.WebsocketClientPolicy` drives it (docs/serving.md). Lean: runtime and
core only, never torch, onnx or the export package."""
