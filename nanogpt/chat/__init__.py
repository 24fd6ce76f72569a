"""Chat: conversations as tokens with a loss mask (template.py), and what is built on it."""
