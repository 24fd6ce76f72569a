"""The OpenAI-compatible server: the batched decoding engine, the FastAPI app, the chat page."""
